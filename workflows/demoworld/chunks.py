"""The demo world's chunks: what one task writes (:func:`run_chunk`: photos + ``.pts``, OBJ
meshes, LRW-style sequences and videos, then its chunk record), the plan of all chunks, the
``truth.h5`` files assembled from the records, and the preview sheet."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from workflows.demoworld.params import (CHUNKS, IDENTITY_OFFSET, LRW_CRF, WorldParams, load_model, lrw_video_id,
                                        mesh_items, mesh_key, photo_key, rng_for)
from workflows.demoworld.scene import (identity_params, lrw_trajectory, make_background, mesh_params, place_camera,
                                       render_photo)

#: the first line of every demo mesh
OBJ_HEADER = "slidergan demo world mesh (vertex colours)"


def write_lrw_video(out: Path, seq: int, frames: np.ndarray, lm: np.ndarray, speech: np.ndarray) -> None:
    """Sequence ``seq`` in LRW's layout: ``.mp4`` (25 fps H.264) + ``.txt`` + the exact
    landmarks ``.landmarks.npy`` [F, 68, 2], and its speech parameters [F, S] as an LRW-3D
    mirror tree (fitting/lrw.py).  Every file atomic."""
    from fitting.lrw import LANDMARKS_SUFFIX, word_txt, write_video
    from pipeline.atomic import atomic_write_bytes, atomic_write_text

    vid = lrw_video_id(seq)
    video = out / "lrw" / "lipread_mp4" / f"{vid}.mp4"
    video.parent.mkdir(parents=True, exist_ok=True)
    write_video(video, frames, crf=LRW_CRF)
    atomic_write_text(video.with_suffix(".txt"), word_txt(vid.split("/")[0], len(frames)))
    buf = io.BytesIO()
    np.save(buf, np.asarray(lm, np.float32))
    atomic_write_bytes(video.with_name(video.stem + LANDMARKS_SUFFIX), buf.getvalue())
    if speech.shape[1]:
        sp = out / "lrw" / "lrw3d" / f"{vid}.npy"
        sp.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.asarray(speech, np.float32))
        atomic_write_bytes(sp, buf.getvalue())


# ---------------------------------------------------------------------------- chunks
def chunk_record(out: Path, kind: str, chunk: int) -> Path:
    """``D/_demo_chunks/<kind>-<chunk>.npz``: the truth rows of a finished chunk."""
    return out / CHUNKS / f"{kind}-{chunk:05d}.npz"


def _save_record(path: Path, rows: list[dict], keys: list[str], phash: str) -> None:
    from pipeline.atomic import atomic_write_bytes

    cols = {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}
    buf = io.BytesIO()
    np.savez(buf, key=np.array(keys, dtype=str), params_hash=np.array(phash), **cols)
    atomic_write_bytes(path, buf.getvalue())


def record_ok(path: Path, phash: str) -> bool:
    try:
        with np.load(path) as z:
            return str(z["params_hash"]) == phash
    except (OSError, ValueError, KeyError):
        return False


def run_chunk(out: str, kind: str, chunk: int, items: list, params: dict, phash: str) -> int:
    """Generate one chunk of ``kind`` (a Dask task); returns the number of items written."""
    import render
    from fitting.images import encode_jpeg
    from fitting.landmarks import format_pts
    from fitting.meshwrite import write_obj
    from pipeline.atomic import atomic_write_bytes, atomic_write_text

    out = Path(out)
    P = WorldParams(**{k: v for k, v in params.items() if k != "generator"})
    rec = chunk_record(out, kind, chunk)
    if record_ok(rec, phash):
        return len(items)
    model, protos = load_model(str(out / "model.h5"))
    rows, keys = [], []
    if kind == "emotionet":
        folder = out / "emotionet"
        folder.mkdir(parents=True, exist_ok=True)
        for i in items:
            row, img = render_photo(model, protos, P, i)
            key = photo_key(i, P.faces)
            atomic_write_bytes(folder / key, encode_jpeg(img, P.jpeg_quality))
            atomic_write_text((folder / key).with_suffix(".pts"), format_pts(row["landmarks"]))
            rows.append(row)
            keys.append(key)
    elif kind == "4dfab":
        for (m, s, f) in items:
            row = mesh_params(model, protos, P, m, s, f)
            V = model.instance(row["p_id"], row["p_exp"])
            key = mesh_key(m, s, f)
            path = out / "4dfab" / f"{key}.obj"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_obj(path, V, model.trilist, colours=model.texture(row["p_tex"]), header=OBJ_HEADER, colour_decimals=4)
            rows.append(row)
            keys.append(key)
    elif kind == "lrw":
        for seq in items:
            rng = rng_for(P.seed, "lrw", seq)
            p_id, p_tex = identity_params(P.seed, "lrw_id", seq, model)
            S = model.n_speech
            traj = lrw_trajectory(rng, P.lrw_frames, model.n_exp, S)
            H = W = P.lrw_size
            V0 = model.instance(p_id, None)
            cam = place_camera(rng, V0, model.landmarks, H, W, min(P.max_yaw, 30.0), P.camera_dist,
                               fill=(0.55, 0.7), jitter=0.03)
            light = render.random_light(rng)
            bg = make_background(rng, H, W)
            tex = model.texture(p_tex)
            folder = out / "lrw" / f"seq{seq:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            frames, lms = [], []
            for f in range(P.lrw_frames):
                V = model.instance(p_id, traj[f])
                res = render.render(V, model.trilist, tex, cam, background=bg, light=light, backend=P.backend)
                key = f"seq{seq:03d}/{f:03d}.jpg"
                frames.append(res.image_uint8())
                atomic_write_bytes(out / "lrw" / key, encode_jpeg(frames[-1], P.jpeg_quality))
                lm = render.project(V[model.landmarks], cam).astype(np.float32)
                lms.append(lm)
                atomic_write_text((out / "lrw" / key).with_suffix(".pts"), format_pts(lm))
                rows.append(dict(sequence=np.int64(seq), frame=np.int64(f),
                                 identity=np.int64(IDENTITY_OFFSET["lrw"] + seq), p_id=p_id, p_exp=traj[f],
                                 p_tex=p_tex, camera=cam.astype(np.float32), landmarks=lm,
                                 video=lrw_video_id(seq)))
                keys.append(key)
            if frames:
                write_lrw_video(out, seq, np.stack(frames), np.stack(lms), traj[:, model.n_exp:])
    else:  # pragma: no cover - internal
        raise ValueError(f"unknown chunk kind {kind!r}")
    rec.parent.mkdir(parents=True, exist_ok=True)
    _save_record(rec, rows, keys, phash)
    return len(items)


def plan_chunks(P: WorldParams, chunk_size: int) -> list[tuple[str, int, list]]:
    """(kind, chunk index, items) for every chunk of the world, deterministic."""
    tasks = []
    photos = list(range(P.faces))
    for c in range(0, len(photos), chunk_size):
        tasks.append(("emotionet", c // chunk_size, photos[c:c + chunk_size]))
    meshes = mesh_items(P)
    for c in range(0, len(meshes), chunk_size):
        tasks.append(("4dfab", c // chunk_size, meshes[c:c + chunk_size]))
    per = max(1, chunk_size // max(P.lrw_frames, 1))
    seqs = list(range(P.lrw_sequences)) if P.lrw_frames > 0 else []
    for c in range(0, len(seqs), per):
        tasks.append(("lrw", c // per, seqs[c:c + per]))
    return tasks


# ---------------------------------------------------------------------------- assembly
def write_truth(path: Path, records: list[Path]) -> int:
    """``truth.h5`` of one dataset from its chunk records (in the order given); -> rows."""
    import h5py

    from pipeline.atomic import atomic_write_with

    cols: dict[str, list] = {}
    for r in records:
        with np.load(r) as z:
            for k in z.files:
                if k == "params_hash":
                    continue
                cols.setdefault(k, []).append(z[k])
    data = {k: np.concatenate(v) for k, v in cols.items()} if cols else {}
    n = len(data.get("key", []))

    def write(tmp):
        with h5py.File(tmp, "w") as h:
            h.attrs["schema"] = "slidergan-demo-truth/1"
            h.attrs["n"] = n
            for k, v in data.items():
                if k == "key" or v.dtype.kind == "U":
                    h.create_dataset(k, data=np.array([str(s) for s in v], dtype=object),
                                     dtype=h5py.string_dtype())
                else:
                    h.create_dataset(k, data=v)

    atomic_write_with(path, write)
    return n


def _thumb(img: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img)
    im.thumbnail((side, side), Image.BILINEAR)
    canvas = Image.new("RGB", (side, side), (24, 24, 24))
    canvas.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
    return np.asarray(canvas)


def make_preview(out: Path, model, P: WorldParams, side: int = 96, cols: int = 8) -> Path:
    """Contact sheet ``D/preview.png``: up to 64 photos, then up to 16 4DFAB-style renders."""
    from PIL import Image

    import render
    from pipeline.atomic import atomic_write_bytes
    from render.camera import camera_fitting_view

    tiles = []
    for i in range(min(64, P.faces)):
        tiles.append(_thumb(np.asarray(Image.open(out / "emotionet" / photo_key(i, P.faces)).convert("RGB")), side))
    while len(tiles) % cols:
        tiles.append(np.full((side, side, 3), 24, np.uint8))
    protos = load_model(str(out / "model.h5"))[1]
    items = mesh_items(P)
    # one frame per session, last frame (the apex) first
    pick = [it for it in items if it[2] == P.frames_4dfab - 1][:16]
    rng = rng_for(P.seed, "preview", 0)
    light = render.random_light(rng, strength=0.5, colour=0.0)
    for (m, s, f) in pick:
        row = mesh_params(model, protos, P, m, s, f)
        V = model.instance(row["p_id"], row["p_exp"])
        cam = camera_fitting_view(V, (2 * side, 2 * side), yaw=np.deg2rad(20.0 * ((m + s) % 3 - 1)), fill=0.9)
        img = render.render(V, model.trilist, model.texture(row["p_tex"]), cam,
                            background=np.full((2 * side, 2 * side, 3), 235, np.uint8), light=light).image_uint8()
        tiles.append(np.asarray(Image.fromarray(img).resize((side, side), Image.LANCZOS)))
    while len(tiles) % cols:
        tiles.append(np.full((side, side, 3), 24, np.uint8))
    if not tiles:
        tiles = [np.full((side, side, 3), 24, np.uint8)]
    rows = [np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)]
    sheet = np.concatenate(rows, axis=0)
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    path = out / "preview.png"
    atomic_write_bytes(path, buf.getvalue())
    return path
