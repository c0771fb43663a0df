"""Importers of published 3DMM files into :class:`fitting.model.MorphableModel`.

:func:`load_lsfm` (LSFM ``.mat``, MATLAB v5 or v7.3/HDF5), :func:`load_linear_model` (the
4DFAB expression model as ``.npz`` / ``.mat`` with mean/components/eigenvalues),
:func:`load_landmark_indices` and :func:`combine` (LSFM identity + 4DFAB expression on one
mean and topology). ``slidergan build-model`` calls them; nothing else reads these formats.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fitting.model import ModelError, MorphableModel, _s, orthonormalise

def _read_mat(path: Path) -> dict:
    """Read a MATLAB file (v5 via scipy, v7.3 via h5py) into a dict of numpy arrays."""
    if not path.is_file():
        raise ModelError(f"file not found: {path}")
    import h5py

    if h5py.is_hdf5(path):
        out = {}
        with h5py.File(path, "r") as f:
            for k, v in f.items():
                if isinstance(v, h5py.Dataset):
                    a = v[()]
                    # MATLAB v7.3 stores arrays transposed (column-major).
                    out[k] = a.T if isinstance(a, np.ndarray) and a.ndim >= 2 else a
        return out
    import scipy.io

    try:
        d = scipy.io.loadmat(str(path))
    except Exception as e:  # noqa: BLE001 - scipy raises several types for bad files
        raise ModelError(f"{path}: not a readable MATLAB file ({e.__class__.__name__})") from None
    return {k: v for k, v in d.items() if not k.startswith("__")}


def _read_linear(path: Path) -> dict:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelError(f"file not found: {path}")
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"{path}: not a readable .npz file ({e.__class__.__name__})") from None
    if suffix == ".mat":
        return _read_mat(path)
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            return {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
    raise ModelError(f"{path}: unsupported model format {suffix!r} (use .mat, .npz or .h5)")


_ALIASES = {
    "mean": ("mean", "mu", "shape_mean", "mean_shape", "s_bar"),
    "components": ("components", "U", "basis", "pc", "shape_pc", "eigenvectors"),
    "eigenvalues": ("eigenvalues", "ev", "eigvals", "shape_ev", "variance", "sigma2"),
    "trilist": ("trilist", "tri", "triangles", "faces"),
    "landmarks": ("landmarks", "landmark_indices", "lm_idx"),
    "names": ("names", "exp_names", "component_names"),
}


def _pick(d: dict, what: str, path: Path, required: bool = True):
    for k in _ALIASES[what]:
        if k in d:
            return d[k]
    if required:
        raise ModelError(f"{path}: missing field {what!r} (accepted names: {', '.join(_ALIASES[what])})")
    return None


@dataclass
class LinearModel:
    """A PCA shape model: mean [3N], components [3N, k] (orthonormal), eigenvalues [k]."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray
    trilist: Optional[np.ndarray] = None
    landmarks: Optional[np.ndarray] = None
    names: Optional[list] = None
    source: str = ""


def _linear_from_dict(d: dict, path: Path) -> LinearModel:
    mean = np.asarray(_pick(d, "mean", path), np.float64).reshape(-1)
    comps = np.asarray(_pick(d, "components", path), np.float64)
    ev = np.asarray(_pick(d, "eigenvalues", path), np.float64).reshape(-1)
    if comps.ndim != 2:
        raise ModelError(f"{path}: components must be a matrix, got shape {list(comps.shape)}")
    if comps.shape[0] != mean.shape[0] and comps.shape[1] == mean.shape[0]:
        comps = comps.T  # stored as [k, 3N]
    if comps.shape[0] != mean.shape[0]:
        raise ModelError(f"{path}: components {list(comps.shape)} do not match mean of length {mean.shape[0]}")
    if ev.shape[0] != comps.shape[1]:
        raise ModelError(f"{path}: {comps.shape[1]} components but {ev.shape[0]} eigenvalues")
    for name, a in (("mean", mean), ("components", comps), ("eigenvalues", ev)):
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{path}: {name} contains NaN or infinite values")
    tri = _pick(d, "trilist", path, required=False)
    if tri is not None:
        tri = np.asarray(tri, np.int64)
        if tri.ndim == 2 and tri.shape[0] == 3 and tri.shape[1] != 3:
            tri = tri.T
    lms = _pick(d, "landmarks", path, required=False)
    names = _pick(d, "names", path, required=False)
    if names is not None:
        names = [_s(n).strip() for n in np.asarray(names).reshape(-1)]
    return LinearModel(mean, comps, ev, tri,
                       None if lms is None else np.asarray(lms, np.int64).reshape(-1), names, str(path))


def load_lsfm(path: str | os.PathLike) -> LinearModel:
    """LSFM identity model as distributed (``all_all_all.mat`` and friends).

    Fields: ``mean`` (3N), ``components`` (3N x K), ``eigenvalues`` (K), ``trilist`` (T x 3,
    0-based), optionally ``cumulative_explained_variance``, ``n_training_samples`` and, for
    the cropped variants, ``map_cropped_to_full`` / ``map_full_to_cropped``.  MATLAB v5 and
    v7.3 (HDF5) files are accepted.  LSFM ships no landmarks; give them separately.
    """
    path = Path(path)
    d = _read_mat(path)
    if "trilist" not in d:
        raise ModelError(f"{path}: missing field 'trilist' (an LSFM model file has mean, components, "
                         "eigenvalues, trilist)")
    lm = _linear_from_dict(d, path)
    if lm.trilist is not None and lm.trilist.size and lm.trilist.min() == 1 \
            and lm.trilist.max() == lm.mean.shape[0] // 3:
        lm.trilist = lm.trilist - 1  # 1-based export
    return lm


def load_linear_model(path: str | os.PathLike) -> LinearModel:
    """A generic linear model file (``.npz``, ``.mat`` or ``.h5``) with mean / components /
    eigenvalues (aliases accepted, see ``_ALIASES``) — the accepted 4DFAB expression model
    and speech model layouts.  Components may be stored [3N, k] or [k, 3N]."""
    path = Path(path)
    return _linear_from_dict(_read_linear(path), path)


def load_landmark_indices(path: str | os.PathLike) -> np.ndarray:
    """68 vertex indices from a text file (one integer per line / whitespace separated),
    ``.npy`` or ``.json`` list."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"landmark index file not found: {path}")
    try:
        if path.suffix == ".npy":
            idx = np.load(path)
        elif path.suffix == ".json":
            import json

            idx = np.asarray(json.loads(path.read_text()))
        else:
            idx = np.loadtxt(path, dtype=np.int64)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{path}: cannot read landmark indices ({e.__class__.__name__})") from None
    idx = np.asarray(idx, np.int64).reshape(-1)
    if idx.shape[0] != 68:
        raise ModelError(f"{path}: expected 68 landmark indices, got {idx.shape[0]}")
    return idx


def combine(identity: LinearModel, expression: LinearModel, landmarks: Optional[Sequence[int]] = None,
            speech: Optional[LinearModel] = None, exp_names: Optional[Sequence[str]] = None,
            n_id: Optional[int] = None, n_exp: Optional[int] = None,
            source: str = "") -> MorphableModel:
    """Identity basis (LSFM) + expression basis (4DFAB) on one mean and topology, as the paper.

    The identity model's mean is the model mean; expression (and speech) components are
    deformations around their own mean and must share the vertex count (topology).  Bases
    are re-orthonormalised (the expression basis is orthogonalised against nothing: LSFM and
    4DFAB bases are used as given, each with orthonormal columns).
    """
    n3 = identity.mean.shape[0]
    for name, m in (("expression", expression), ("speech", speech)):
        if m is not None and m.mean.shape[0] != n3:
            raise ModelError(f"{name} model has {m.mean.shape[0] // 3} vertices but the identity model has "
                             f"{n3 // 3}: topologies differ (give models in dense correspondence)")
    tri = identity.trilist if identity.trilist is not None else expression.trilist
    if tri is None:
        raise ModelError("no triangle list in the identity or expression model")
    lms = landmarks if landmarks is not None else (
        identity.landmarks if identity.landmarks is not None else expression.landmarks)
    if lms is None:
        raise ModelError("no 68 landmark indices: pass --landmarks FILE (LSFM ships none)")
    k = identity.components.shape[1] if n_id is None else min(n_id, identity.components.shape[1])
    e = expression.components.shape[1] if n_exp is None else min(n_exp, expression.components.shape[1])
    names = list(exp_names) if exp_names else (expression.names or [])
    names = names[:e] if len(names) >= e else []
    kw = {}
    if speech is not None:
        kw = dict(U_speech=orthonormalise(speech.components), ev_speech=speech.eigenvalues)
    return MorphableModel(
        mean=identity.mean, U_id=orthonormalise(identity.components[:, :k]), ev_id=identity.eigenvalues[:k],
        U_exp=orthonormalise(expression.components[:, :e]), ev_exp=expression.eigenvalues[:e],
        trilist=tri, landmarks=np.asarray(lms, np.int64), exp_names=names,
        source=source or f"{Path(identity.source).name}+{Path(expression.source).name}", **kw)
