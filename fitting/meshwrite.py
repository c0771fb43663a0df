"""Writing OBJ meshes: the project's one OBJ writer (the demo world's 4DFAB-style meshes,
and the test meshes of tests/warps).  Reading is :mod:`fitting.meshio`.

Numbers are written in fixed point by a compiled row formatter (:func:`format_rows`):
``np.savetxt`` formats row by row in Python and took ~0.4 s per 53k-vertex mesh, most of
``make-demo``'s time.  Files are written atomically (``pipeline.atomic``: a unique temporary
name, then a rename), so a killed writer leaves no half-written mesh under the final name.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

#: largest magnitude :func:`format_rows` writes exactly (int64 fixed point with 6 decimals)
MAX_ABS = 1e12


def _format_rows_kernel():
    """Compile (once, cached on disk) the fixed-point row formatter used by :func:`format_rows`."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def kernel(vals, decimals, prefix, out):  # pragma: no cover - jitted
        pos = 0
        digits = np.empty(24, np.uint8)
        for i in range(vals.shape[0]):
            for c in range(prefix.shape[0]):
                out[pos] = prefix[c]
                pos += 1
            for k in range(vals.shape[1]):
                d = decimals[k]
                scale = 10 ** d
                x = vals[i, k]
                q = np.int64(abs(x) * scale + 0.5)
                if x < 0 and q != 0:
                    out[pos] = 45  # '-'
                    pos += 1
                ip = q // scale
                fp = q - ip * scale
                n = 0
                while True:
                    digits[n] = 48 + ip % 10
                    ip //= 10
                    n += 1
                    if ip == 0:
                        break
                for j in range(n - 1, -1, -1):
                    out[pos] = digits[j]
                    pos += 1
                if d > 0:
                    out[pos] = 46  # '.'
                    pos += 1
                    for j in range(d - 1, -1, -1):
                        out[pos + j] = 48 + fp % 10
                        fp //= 10
                    pos += d
                out[pos] = 32 if k < vals.shape[1] - 1 else 10  # ' ' or '\n'
                pos += 1
        return pos

    return kernel


_KERNEL = []


def format_rows(prefix: str, vals: np.ndarray, decimals) -> bytes:
    """``prefix v0 v1 ...\\n`` per row of ``vals [n, k]`` in fixed point with ``decimals[k]``
    digits (0 = integer): ``np.savetxt(fmt="prefix %.6f ...")``, compiled, except that a value
    that rounds to zero has no sign (``0.000000``, not ``-0.000000``).  Values must be finite
    and below :data:`MAX_ABS` in magnitude (ValueError otherwise)."""
    if not _KERNEL:
        _KERNEL.append(_format_rows_kernel())
    vals = np.ascontiguousarray(vals, dtype=np.float64)
    if vals.ndim != 2:
        vals = vals.reshape(len(vals), -1)
    if vals.size and not np.isfinite(vals).all():
        raise ValueError("cannot write non-finite values to OBJ")
    if vals.size and np.abs(vals).max() >= MAX_ABS:
        raise ValueError(f"cannot write values of magnitude >= {MAX_ABS:g} to OBJ")
    dec = np.asarray(decimals, dtype=np.int64)
    if dec.shape != (vals.shape[1],) or (dec < 0).any() or (dec > 9).any():
        raise ValueError(f"need one decimals entry in 0..9 per column, got {list(dec)} for {vals.shape[1]} columns")
    pre = np.frombuffer(prefix.encode(), np.uint8)
    width = len(pre) + int(sum(16 + d for d in dec)) + 2
    out = np.empty(len(vals) * width, np.uint8)
    n = _KERNEL[0](vals, dec, pre, out)
    return out[:n].tobytes()


_FACES_TEXT: dict = {}


def _faces_text(triangles: np.ndarray) -> bytes:
    """``f a b c`` lines (1-based), formatted once per topology (the demo world writes many
    meshes of one model)."""
    tri = np.asarray(triangles, np.int64).reshape(-1, 3)
    key = (len(tri), hashlib.sha1(tri.tobytes()).hexdigest())
    text = _FACES_TEXT.get(key)
    if text is None:
        text = format_rows("f ", tri + 1, [0, 0, 0])
        _FACES_TEXT.clear()
        _FACES_TEXT[key] = text
    return text


def obj_bytes(vertices, triangles, colours=None, tcoords=None, mtllib: str | None = None,
              header: str | None = None, decimals: int = 6, colour_decimals: int = 6) -> bytes:
    """The bytes of an OBJ: an optional ``# header`` line and ``mtllib`` line, ``v x y z``
    (``v x y z r g b`` with per-vertex ``colours [N, 3]``, which trimesh and
    :func:`fitting.meshio.read_obj` load as vertex colours), ``vt u v`` for per-vertex
    ``tcoords [N, 2]`` (faces then ``f a/a b/b c/c``), else ``f a b c``.  Positions and
    texture coordinates get ``decimals`` digits, colours ``colour_decimals``."""
    v = np.asarray(vertices, np.float64).reshape(-1, 3)
    parts = []
    if header is not None:
        parts.append(f"# {header}\n".encode())
    if mtllib is not None:
        parts.append(f"mtllib {mtllib}\n".encode())
    if colours is not None:
        vc = np.hstack([v, np.asarray(colours, np.float64).reshape(-1, 3)])
        parts.append(format_rows("v ", vc, [decimals] * 3 + [colour_decimals] * 3))
    else:
        parts.append(format_rows("v ", v, [decimals] * 3))
    if tcoords is not None:
        parts.append(format_rows("vt ", np.asarray(tcoords, np.float64).reshape(-1, 2), [decimals] * 2))
        t = np.asarray(triangles, np.int64).reshape(-1, 3) + 1
        parts.append("".join(f"f {a}/{a} {b}/{b} {c}/{c}\n" for a, b, c in t).encode())
    else:
        parts.append(_faces_text(triangles))
    return b"".join(parts)


def write_obj(path, vertices, triangles, colours=None, tcoords=None, texture_name: str | None = None,
              header: str | None = None, decimals: int = 6, colour_decimals: int = 6) -> None:
    """Write :func:`obj_bytes` to ``path`` atomically; with ``texture_name`` also a material
    ``<stem>.mtl`` (``map_Kd texture_name``) beside it, written first, also atomically."""
    from pipeline.atomic import atomic_write_bytes, atomic_write_text

    path = Path(path)
    mtllib = None
    if texture_name is not None:
        mtl = path.with_suffix(".mtl")
        atomic_write_text(mtl, f"newmtl material0\nmap_Kd {texture_name}\n")
        mtllib = mtl.name
    atomic_write_bytes(path, obj_bytes(vertices, triangles, colours, tcoords, mtllib, header=header,
                                       decimals=decimals, colour_decimals=colour_decimals))
