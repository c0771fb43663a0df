"""The offline demo world (``slidergan make-demo``): a 3DMM, EmotioNet-style photos,
4DFAB-style meshes and LRW-style sequences with exact ground truth.

Layout of ``D`` (docs/demo_world.md; truth schemas in docs/INTERFACES.md)::

    D/model.h5
    D/emotionet/<00000>.jpg + .pts, truth.h5
    D/4dfab/id<000>/s<00>/<000>.obj (vertex colours), truth.h5
    D/lrw/seq<000>/<000>.jpg + .pts, truth.h5
    D/lrw/lipread_mp4/<WORD>/<split>/<WORD>_<id>.mp4 + .txt + .landmarks.npy   (LRW layout)
    D/lrw/lrw3d/<WORD>/<split>/<WORD>_<id>.npy     LRW-3D-style speech parameters [frames, S]
    D/preview.png       contact sheet: 64 photos + 16 mesh renders
    D/_demo.json        written last: params, params_hash, counts (re-run = no-op)

Every item draws its randomness from ``np.random.default_rng([seed, domain, index...])``,
so the world does not depend on chunking or on the number of workers.  Work is split in
chunks (``demo.chunk_size`` items) run as tasks (:func:`pipeline.tasks.run_tasks`); each
chunk writes its files atomically and then a chunk record
``D/_demo_chunks/<kind>-<chunk>.npz`` (its truth rows), so a killed run resumes where it
stopped.  ``truth.h5`` files are assembled from the chunk records at the end.

Modules: :mod:`.params` (the parameters, seed streams, item keys, the per-process model),
:mod:`.scene` (identities, expressions, backgrounds, cameras, the photo renders),
:mod:`.chunks` (what a task writes, the chunk plan, the truth files, the preview).  The
driver (lock, marker, resume, calls) is :mod:`workflows.stages.demo_world`; rendering is
:mod:`render`, the model :mod:`fitting.model`, the file writers :func:`fitting.images.encode_jpeg`,
:func:`fitting.landmarks.format_pts` and :mod:`fitting.meshwrite`.
"""
