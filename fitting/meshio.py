"""Reading registered face meshes (4DFAB and the demo world's copies of it).

Accepted inputs (see docs/warps.md):

* ``.obj`` — ``v x y z [r g b]``, ``vt u v``, ``f`` with ``a``, ``a/b``, ``a/b/c`` or
  ``a//c`` corners (polygons are fan-triangulated, negative indices allowed), ``mtllib``
  with ``map_Kd`` for the texture; without a material, an image with the same stem beside
  the ``.obj`` (``.jpg``, ``.png``, ``.bmp`` — 4DFAB ships textures that way) is used.
* ``.ply`` — through trimesh (``process=False``: vertex order kept), with vertex colours
  when present.

The vertex order is what matters (meshes must be in correspondence with the 3DMM), so the
OBJ reader is hand-written: trimesh (and most loaders) split vertices at texture seams and
re-order them, which breaks the correspondence.  Texture colours are turned into
per-vertex colours (bilinear sample at each vertex's first texture coordinate), which is
what the renderer takes.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MESH_SUFFIXES = (".obj", ".ply")
TEXTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class MeshError(ValueError):
    """A mesh file that cannot be read (becomes a rejects.jsonl line)."""


@dataclass
class Mesh:
    """A triangle mesh: ``vertices [N, 3] float64``, ``triangles [T, 3] int64``,
    ``colours [N, 3] float32`` in [0, 1] or None, ``texture [H, W, 3] uint8`` or None,
    ``tcoords [N, 2] float32`` (per vertex, OBJ convention v up) or None."""
    vertices: np.ndarray
    triangles: np.ndarray
    colours: np.ndarray | None = None
    texture: np.ndarray | None = None
    tcoords: np.ndarray | None = None

    @property
    def n_vertices(self) -> int:
        return int(self.vertices.shape[0])


def _fromstring(text: str, dtype) -> np.ndarray:
    """numpy's C text parser (whitespace-separated numbers); stops at the first bad token,
    which the callers detect by the count (then fall back to the strict Python path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.fromstring(text, dtype=dtype, sep=" ")


def _floats(lines: list[str], what: str, path) -> np.ndarray:
    if not lines:
        return np.zeros((0, 3))
    first = len(lines[0].split())
    flat = _fromstring(" ".join(lines), np.float64) if first else np.zeros(0)
    if first and flat.size == first * len(lines) and np.isfinite(flat).all():
        return flat.reshape(len(lines), first)
    rows = [ln.split() for ln in lines]
    width = min(len(r) for r in rows)
    try:
        if all(len(r) == width for r in rows):
            return np.array(" ".join(" ".join(r) for r in rows).split(), dtype=np.float64).reshape(len(rows), width)
        return np.array([[float(x) for x in r[:width]] for r in rows], dtype=np.float64)
    except ValueError as e:
        raise MeshError(f"{path}: bad {what} line ({e})") from None


def _faces(lines: list[str], n_v: int, n_vt: int, path) -> tuple[np.ndarray, np.ndarray | None]:
    """Face lines -> (triangles [T,3] int64, texture-coordinate indices [T,3] or None)."""
    if not lines:
        raise MeshError(f"{path}: no faces")
    first = lines[0].split()[0]
    fields = first.replace("//", "/0/").count("/") + 1
    tris = tex = None
    # fast path: all triangles with the same corner format
    try:
        joined = " ".join(lines).replace("//", "/0/").replace("/", " ")
        flat = _fromstring(joined, np.int64)
        if flat.size == len(lines) * 3 * fields:
            idx = flat.reshape(len(lines), 3, fields)
            tris = idx[..., 0]
            tex = idx[..., 1] if fields >= 2 else None
    except ValueError:
        tris = None
    if tris is None:  # general polygons
        t_list, x_list = [], []
        for ln in lines:
            corners = [c.split("/") for c in ln.split()]
            if len(corners) < 3:
                raise MeshError(f"{path}: face with fewer than 3 corners")
            try:
                vi = [int(c[0]) for c in corners]
                ti = [int(c[1]) if len(c) > 1 and c[1] else 0 for c in corners]
            except ValueError:
                raise MeshError(f"{path}: bad face line {ln[:60]!r}") from None
            for j in range(1, len(vi) - 1):
                t_list.append((vi[0], vi[j], vi[j + 1]))
                x_list.append((ti[0], ti[j], ti[j + 1]))
        tris = np.array(t_list, dtype=np.int64)
        tex = np.array(x_list, dtype=np.int64)
        if not tex.any():
            tex = None
    tris = np.where(tris < 0, tris + n_v, tris - 1)
    if tris.min() < 0 or tris.max() >= n_v:
        raise MeshError(f"{path}: face index out of range (mesh has {n_v} vertices)")
    if tex is not None:
        if (tex == 0).any() or n_vt == 0:
            tex = None
        else:
            tex = np.where(tex < 0, tex + n_vt, tex - 1)
            if tex.min() < 0 or tex.max() >= n_vt:
                raise MeshError(f"{path}: texture coordinate index out of range")
    return tris, tex


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 — unreadable texture -> clear error
        raise MeshError(f"cannot read texture {path}: {e.__class__.__name__}") from None


def _find_texture(path: Path, text_lines: list[str]) -> Path | None:
    for ln in text_lines:
        if ln.startswith("mtllib"):
            mtl = path.parent / ln.split(None, 1)[1].strip()
            if mtl.is_file():
                for m in mtl.read_text(errors="replace").splitlines():
                    m = m.strip()
                    if m.lower().startswith("map_kd"):
                        tex = path.parent / m.split()[-1]
                        if tex.is_file():
                            return tex
    for suf in TEXTURE_SUFFIXES:
        for cand in (path.with_suffix(suf), path.with_suffix(suf.upper())):
            if cand.is_file():
                return cand
    return None


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup: ``texture [H, W, 3] uint8``, ``uv [N, 2]`` (OBJ convention:
    u right, v up, [0, 1]) -> ``[N, 3] float32`` in [0, 1]."""
    H, W = texture.shape[:2]
    x = np.clip(uv[:, 0], 0, 1) * W - 0.5
    y = (1.0 - np.clip(uv[:, 1], 0, 1)) * H - 0.5
    x0 = np.clip(np.floor(x).astype(np.int64), 0, W - 1)
    y0 = np.clip(np.floor(y).astype(np.int64), 0, H - 1)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx = np.clip(x - x0, 0, 1)[:, None]
    fy = np.clip(y - y0, 0, 1)[:, None]
    t = texture.astype(np.float32) / 255.0
    top = t[y0, x0] * (1 - fx) + t[y0, x1] * fx
    bot = t[y1, x0] * (1 - fx) + t[y1, x1] * fx
    return (top * (1 - fy) + bot * fy).astype(np.float32)


def read_obj(path) -> Mesh:
    path = Path(path)
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise MeshError(f"cannot read {path}: {e.strerror}") from None
    lines = text.splitlines()
    v_lines = [ln[2:] for ln in lines if ln[:2] == "v "]
    vt_lines = [ln[3:] for ln in lines if ln[:3] == "vt "]
    f_lines = [ln[2:] for ln in lines if ln[:2] == "f "]
    other = [ln for ln in lines if ln[:6] == "mtllib"]
    v = _floats(v_lines, "vertex", path)
    if v.shape[0] == 0 or v.shape[1] < 3:
        raise MeshError(f"{path}: no vertices")
    vt = _floats(vt_lines, "texture coordinate", path)
    tris, tex_idx = _faces(f_lines, v.shape[0], vt.shape[0], path)
    colours = None
    if v.shape[1] >= 6:
        c = v[:, 3:6]
        colours = (c / 255.0 if c.max() > 1.0 else c).astype(np.float32)
    texture = tcoords = None
    if tex_idx is not None and vt.shape[0]:
        # per-vertex texture coordinate: the first corner that references the vertex
        order = np.argsort(tris.ravel(), kind="stable")
        flat_v, flat_t = tris.ravel()[order], tex_idx.ravel()[order]
        first = np.r_[True, flat_v[1:] != flat_v[:-1]]
        tcoords = np.zeros((v.shape[0], 2), np.float32)
        tcoords[flat_v[first]] = vt[flat_t[first], :2]
        tex_path = _find_texture(path, other)
        if tex_path is not None:
            texture = _read_image(tex_path)
            colours = sample_texture(texture, tcoords)
    return Mesh(v[:, :3].copy(), tris, colours, texture, tcoords)


def read_ply(path) -> Mesh:
    import trimesh

    try:
        m = trimesh.load(str(path), process=False, force="mesh")
    except Exception as e:  # noqa: BLE001 — unreadable file -> clear error
        raise MeshError(f"cannot read {path}: {e.__class__.__name__}: {str(e)[:80]}") from None
    v = np.asarray(m.vertices, np.float64)
    if v.shape[0] == 0:
        raise MeshError(f"{path}: no vertices")
    colours = None
    vis = getattr(m, "visual", None)
    if vis is not None and getattr(vis, "kind", None) == "vertex":
        colours = (np.asarray(vis.vertex_colors)[:, :3].astype(np.float32) / 255.0)
    return Mesh(v, np.asarray(m.faces, np.int64), colours)


def read_mesh(path) -> Mesh:
    """Read an ``.obj`` or ``.ply`` mesh (see module docstring); raises :class:`MeshError`."""
    suf = Path(path).suffix.lower()
    if suf == ".obj":
        return read_obj(path)
    if suf == ".ply":
        return read_ply(path)
    raise MeshError(f"unsupported mesh format {suf!r} (expected .obj or .ply)")


def find_meshes(root) -> list[str]:
    """Mesh files under ``root`` (recursive), as sorted POSIX paths relative to ``root``."""
    root = Path(root)
    out = []
    for dirpath, _, files in os.walk(root):
        for f in files:
            if Path(f).suffix.lower() in MESH_SUFFIXES:
                out.append((Path(dirpath) / f).relative_to(root).as_posix())
    return sorted(out)


def parse_mesh_key(rel: str) -> tuple[str, str, str]:
    """``<identity>/<session>/.../<frame>.obj`` -> (identity, session, key without suffix).

    4DFAB layout: the first folder is the identity, the second the session (deeper
    folders, e.g. an expression sequence, are part of the frame id).  A mesh directly under
    ``<identity>/`` has session ``"0"``; a mesh at the top level is its own identity."""
    parts = Path(rel).with_suffix("").parts
    key = "/".join(parts)
    if len(parts) >= 3:
        return parts[0], parts[1], key
    if len(parts) == 2:
        return parts[0], "0", key
    return parts[0], "0", key


def load_correspondence(path) -> np.ndarray:
    """A vertex index map ``[N_model] int64``: model vertex ``i`` is mesh vertex ``map[i]``.
    Formats: ``.npy``, ``.json`` (a list), or text with whitespace/comma-separated integers."""
    from pipeline.config import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"correspondence file not found: {path}")
    try:
        if p.suffix.lower() == ".npy":
            m = np.load(p, allow_pickle=False)
        elif p.suffix.lower() == ".json":
            m = np.asarray(json.loads(p.read_text()))
        else:
            m = np.array(p.read_text().replace(",", " ").split(), dtype=np.float64)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"cannot read correspondence file {path}: {e.__class__.__name__}") from None
    m = np.asarray(m).ravel()
    if m.size == 0 or not np.all(np.isfinite(m.astype(np.float64))) or np.any(np.asarray(m, np.float64) % 1 != 0) \
            or m.min() < 0:
        raise ConfigError(f"correspondence file {path}: expected non-negative integer vertex indices")
    return m.astype(np.int64)


def apply_correspondence(mesh: Mesh, index_map: np.ndarray, triangles: np.ndarray) -> Mesh:
    """Re-order a mesh into the model's vertex order: ``vertices[index_map]`` (and colours),
    with the model's ``triangles``.  Raises :class:`MeshError` when the map points past the
    mesh."""
    if index_map.max() >= mesh.n_vertices:
        raise MeshError(f"correspondence map refers to vertex {int(index_map.max())}, "
                        f"mesh has {mesh.n_vertices}")
    colours = None if mesh.colours is None else mesh.colours[index_map]
    return Mesh(mesh.vertices[index_map], np.asarray(triangles, np.int64), colours)
