"""The ``4dfab`` shard stage (slidergan project-4dfab): expression parameters of registered
4DFAB meshes and 128x128 renders of them (the IED test set).

Glue only; the algorithms are :mod:`fitting.projection` and :mod:`fitting.meshio`.
One input item = one mesh file.  Datasets per row: ``key`` (path without suffix),
``group`` (stable id of identity+session), ``identity``, ``session``, ``image``,
``p_exp`` (by ``project.method``), ``p_exp_projection`` (paper), ``p_exp_joint``,
``p_id`` (joint fit), ``camera`` (one random camera per identity+session, in the 128x128
crop), ``split`` (int8: 0 train, 1 test; by identity).

Rejects: unreadable meshes, vertex counts that differ from the model (unless
``--correspondence`` maps them), non-finite vertices.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.cache import cached
from pipeline.stage import ChunkResult, Stage
from pipeline.threads import one_blas_thread

METHODS = ("projection", "joint")


def stable_id(text: str) -> int:
    """Non-negative int64 id: first 63 bits of sha256(text)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def identity_numbers(names) -> dict[str, int]:
    """Identity name -> int label: the name's trailing number when every name has one and
    they are distinct (``id007`` -> 7, ``F0012`` -> 12); else the index in sorted order."""
    names = sorted(set(names))
    nums = {}
    for n in names:
        m = re.search(r"(\d+)$", n)
        if m is None:
            nums = None
            break
        nums[n] = int(m.group(1))
    if nums is not None and len(set(nums.values())) == len(names):
        return nums
    return {n: i for i, n in enumerate(names)}


def split_identities(names, test_fraction: float, seed: int) -> set[str]:
    """Held-out identities: ``round(test_fraction * n)`` (at least 1 when 0 < fraction and
    n >= 2) of the names, ordered by ``sha256(seed, name)`` (stable, unbiased)."""
    names = sorted(set(names))
    if test_fraction <= 0 or not names:
        return set()
    n_test = int(round(test_fraction * len(names)))
    if len(names) >= 2:
        n_test = min(max(n_test, 1), len(names) - 1)
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"split\x00{seed}\x00{n}".encode()).digest())
    return set(ranked[:n_test])


def group_camera(seed: int, group_name: str, model, size: int, yaw: float, pitch: float, roll: float) -> np.ndarray:
    """One random camera ``[7]`` per identity+session (deterministic): pitch/yaw/roll
    uniform in +-(the given degrees), then framed exactly like the fit stage's aligned
    crops: the similarity that maps the projected mean landmarks onto ``fitting.align``'s
    reference shape is folded into the camera (weak perspective)."""
    from fitting.align import reference_shape, similarity_transform
    from fitting.sampling import item_rng
    from fitting.warp_image import fold_align
    from render.camera import make_camera, project

    rng = item_rng(seed, group_name, 0, purpose="camera")
    a = np.deg2rad([rng.uniform(-pitch, pitch), rng.uniform(-yaw, yaw), rng.uniform(-roll, roll)])
    L = model.mean_shape[model.landmarks].astype(np.float64)
    cam = make_camera(*a, tx=0.0, ty=0.0, scale=1.0)
    A = similarity_transform(project(L, cam), reference_shape(L, size))
    return fold_align(cam, A)


class Project4DFABStage(Stage):
    """Picklable: paths and options; the model, projector and correspondence are loaded per
    process."""

    name = "4dfab"
    version = "2"
    compression = "lzf"

    def __init__(self, meshes_dir: str, model_path: str, project_cfg: dict, seed: int = 0,
                 correspondence: Optional[str] = None, size: int = 128, backend: str = "fast"):
        from pipeline.config import ConfigError

        from fitting.meshio import find_meshes, parse_mesh_key

        self.meshes_dir = os.path.abspath(meshes_dir)
        self.model_path = os.path.abspath(model_path)
        self.cfg = dict(project_cfg)
        self.seed = int(seed)
        self.size = int(size)
        self.backend = backend
        self.correspondence = os.path.abspath(correspondence) if correspondence else None
        if self.cfg.get("method", "joint") not in METHODS:
            raise ConfigError(f"project.method must be one of {', '.join(METHODS)}")
        if self.cfg.get("align", "none") not in ("none", "similarity"):
            raise ConfigError("project.align must be none or similarity")
        tf = float(self.cfg.get("test_fraction", 0.17))
        if not 0.0 <= tf < 1.0:
            raise ConfigError(f"project.test_fraction must be in [0, 1), got {tf}")
        self.files = find_meshes(self.meshes_dir)
        if not self.files:
            raise ConfigError(f"no .obj/.ply meshes under {meshes_dir}")
        parsed = [parse_mesh_key(f) for f in self.files]
        idents = [p[0] for p in parsed]
        self.identity_ids = identity_numbers(idents)
        self.test_identities = sorted(split_identities(idents, tf, self.seed))
        self._corr_hash = None
        if self.correspondence:
            from fitting.meshio import load_correspondence

            load_correspondence(self.correspondence)  # validate now: clear error, exit 2
            self._corr_hash = hashlib.sha256(Path(self.correspondence).read_bytes()).hexdigest()[:16]
        from workflows.stages.warps import checked_model_hash

        self._model_hash = checked_model_hash(self.model_path)     # a corrupt model: exit 2 now

    # ------------------------------------------------------------------ Stage API
    def input_keys(self) -> list[str]:
        return list(self.files)

    def params(self) -> dict:
        cfg = {k: v for k, v in sorted(self.cfg.items()) if k != "chunk_size"}
        ids = hashlib.sha256(repr(sorted(self.identity_ids.items())).encode()).hexdigest()[:16]
        return {"project": cfg, "seed": self.seed, "size": self.size, "backend": self.backend,
                "correspondence": self._corr_hash, "identities": ids, "test": self.test_identities,
                "meshes": self.meshes_dir}

    def model_hash(self) -> str | None:
        return self._model_hash

    def attrs(self) -> dict:
        return {"method": str(self.cfg.get("method", "joint")), "camera_layout": "pitch,yaw,roll,tx,ty,scale,dist",
                "split": "0 train, 1 test (by identity)", "meshes": self.meshes_dir}

    # ------------------------------------------------------------------ helpers
    def _model(self):
        from workflows.stages.warps import load_model

        return cached(("model", self.model_path, self._model_hash), lambda: load_model(self.model_path))

    def _projector(self):
        from fitting.projection import JointProjector

        ridge = float(self.cfg.get("ridge", 0.0))
        return cached(("joint", self.model_path, self._model_hash, ridge),
                      lambda: JointProjector(self._model(), ridge=ridge))

    def _mouth(self):
        """The warps' mouth darkening (:class:`fitting.warp_mesh.MouthStretch`), so open mouths in
        vertex-coloured meshes look like they do in the 3D-warped training images."""
        from fitting.warp_mesh import MouthStretch

        if not bool(self.cfg.get("mouth", True)):
            return None
        model = self._model()
        return cached(("mouth", self.model_path, self._model_hash),
                      lambda: MouthStretch.build(model.mean_shape, model.trilist, model.landmarks))

    def _index_map(self):
        from fitting.meshio import load_correspondence

        if not self.correspondence:
            return None
        return cached(("corr", self.correspondence, self._corr_hash), lambda: load_correspondence(self.correspondence))

    def load_mesh(self, rel: str):
        """The mesh in model vertex order, or raise ``Reject``."""
        from fitting.meshio import MeshError, apply_correspondence, read_mesh
        from pipeline.stage import Reject

        model = self._model()
        try:
            mesh = read_mesh(Path(self.meshes_dir) / rel)
        except MeshError as e:
            raise Reject("unreadable mesh", str(e).splitlines()[0]) from None
        imap = self._index_map()
        if imap is not None:
            if len(imap) != model.n_vertices:
                raise Reject("correspondence mismatch",
                             f"map has {len(imap)} entries, model has {model.n_vertices} vertices")
            try:
                mesh = apply_correspondence(mesh, imap, model.trilist)
            except MeshError as e:
                raise Reject("correspondence mismatch", str(e)) from None
        elif mesh.n_vertices != model.n_vertices:
            raise Reject("vertex count mismatch",
                         f"mesh has {mesh.n_vertices} vertices, model has {model.n_vertices} "
                         "(give --correspondence FILE to map them)")
        if not np.all(np.isfinite(mesh.vertices)):
            raise Reject("bad mesh", "non-finite vertex coordinates")
        return mesh

    def process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        with one_blas_thread():
            return self._process_chunk(keys, chunk)

    def _process_chunk(self, keys: list[str], chunk: int) -> ChunkResult:
        from fitting.meshio import parse_mesh_key
        from fitting.projection import project_expression, similarity_align
        from pipeline.stage import Reject
        from fitting.sampling import item_rng
        from render import random_light, render

        model = self._model()
        lit = bool(self.cfg.get("light", True))
        proj = self._projector()
        cfg = self.cfg
        method = str(cfg.get("method", "joint"))
        yaw, pitch, roll = (float(cfg.get(k, d)) for k, d in (("max_yaw", 20.0), ("max_pitch", 10.0), ("max_roll", 5.0)))
        align = str(cfg.get("align", "none"))
        test = set(self.test_identities)
        bg = np.asarray(cfg.get("background", [0.5, 0.5, 0.5]), np.float32)
        cols = {k: [] for k in ("key", "group", "identity", "session", "image", "p_exp", "p_exp_projection",
                                "p_exp_joint", "p_id", "camera", "split")}
        rejects = []
        for rel in keys:
            ident, sess, key = parse_mesh_key(rel)
            # Only declared input errors are rejects (BadInput: unreadable, mismatched or
            # degenerate meshes); anything else fails the chunk.
            try:
                mesh = self.load_mesh(rel)
                S = mesh.vertices
                if align == "similarity":
                    S = similarity_align(S, model.mean_shape)
                    if not np.all(np.isfinite(S)):
                        raise Reject("bad mesh", "degenerate mesh: no similarity alignment to the model")
                p_proj = project_expression(model, S)
                p_id, p_joint = proj(S)
                if not all(np.all(np.isfinite(a)) for a in (p_proj, p_id, p_joint)):
                    raise Reject("bad mesh", "degenerate mesh: non-finite projection")
            except Reject as e:
                rejects.append(e.as_reject(key))
                continue
            colours = mesh.colours if mesh.colours is not None else model.texture()
            gname = f"{ident}/{sess}"
            cam = group_camera(self.seed, gname, model, self.size, yaw, pitch, roll)
            light = random_light(item_rng(self.seed, gname, 0, purpose="light")) if lit else None
            mouth = self._mouth()
            if mouth is not None and mesh.colours is not None:
                colours = mouth.apply(S, colours, model.instance(p_id=p_id))
            image = np.empty((self.size, self.size, 3), np.float32)
            image[:] = bg
            img = render(S, model.trilist, colours, cam, background=image, light=light,
                         backend=self.backend).image_uint8()
            cols["key"].append(key)
            cols["group"].append(stable_id(gname))
            cols["identity"].append(self.identity_ids[ident])
            cols["session"].append(sess)
            cols["image"].append(img)
            cols["p_exp"].append(p_joint if method == "joint" else p_proj)
            cols["p_exp_projection"].append(p_proj)
            cols["p_exp_joint"].append(p_joint)
            cols["p_id"].append(p_id)
            cols["camera"].append(cam)
            cols["split"].append(1 if ident in test else 0)
        E, K = model.n_exp, proj.n_id
        shapes = {"group": ((), np.int64), "identity": ((), np.int64),
                  "image": ((self.size, self.size, 3), np.uint8), "p_exp": ((E,), np.float32),
                  "p_exp_projection": ((E,), np.float32), "p_exp_joint": ((E,), np.float32),
                  "p_id": ((K,), np.float32), "camera": ((7,), np.float32), "split": ((), np.int8)}
        rows = {"key": cols["key"], "session": cols["session"]}
        for name, (shape, dt) in shapes.items():
            rows[name] = np.stack(cols[name]).astype(dt) if cols[name] else np.zeros((0,) + shape, dt)
        return ChunkResult(rows=rows, rejects=rejects)


def build_stage(meshes: str, model: str, project_cfg: dict, seed: int = 0, correspondence: Optional[str] = None,
                size: int = 128, backend: str = "fast") -> Project4DFABStage:
    from workflows.common import require_dir, require_file

    require_dir(meshes, "mesh folder")
    require_file(model, "model file")
    return Project4DFABStage(meshes, model, project_cfg, seed=seed, correspondence=correspondence, size=size,
                             backend=backend)


def write_preview(stage_dir, n: int = 16, cols: int = 8) -> Path | None:
    """``P/preview.png``: ``n`` renders (spread over the groups), ``cols`` per row.  Atomic."""
    from PIL import Image

    from pipeline.shards import ShardSet

    ds = ShardSet(stage_dir)
    if len(ds) == 0:
        return None
    groups = ds.read("group")
    first = list(dict.fromkeys(groups.tolist()))
    pick = [int(np.nonzero(groups == g)[0][-1]) for g in first][:n]
    if len(pick) < n:
        rest = [i for i in range(len(ds)) if i not in set(pick)]
        pick += rest[: n - len(pick)]
    S = ds.datasets["image"][1][1]
    rows = (len(pick) + cols - 1) // cols
    sheet = np.full((rows * (S + 4), cols * (S + 4), 3), 255, np.uint8)
    for i, idx in enumerate(pick):
        y, x = (i // cols) * (S + 4), (i % cols) * (S + 4)
        sheet[y:y + S, x:x + S] = ds.read("image", idx)
    out = Path(stage_dir) / "preview.png"
    tmp = out.with_name(f".preview.png.tmp-{os.getpid()}")
    Image.fromarray(sheet).save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
