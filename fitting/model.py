"""The 3D morphable model (3DMM): mean shape, identity / expression (/ speech) bases.

Shapes (N vertices, K identity, E expression, S speech components, T triangles):

- ``mean``      float32 [3N]      flattened (x0, y0, z0, x1, ...)
- ``U_id``      float32 [3N, K]   orthonormal columns, eigenvalues ``ev_id`` [K]
- ``U_exp``     float32 [3N, E]   orthonormal columns, eigenvalues ``ev_exp`` [E]
- ``U_speech``  float32 [3N, S]   optional, eigenvalues ``ev_speech`` [S]
- ``trilist``   int64   [T, 3]
- ``landmarks`` int64   [68]      vertex indices, iBUG 68 order
- ``texture_mean`` float32 [N, 3] optional albedo in [0, 1]; ``U_tex`` [3N, Kt], ``ev_tex`` [Kt]

Parameters are *normalised* everywhere outside this module: ``p_norm = p / sqrt(ev)``, so
that a standard normal draw is a plausible face and [-1, 1] spans the common range.
A shape is ``S = mean + U_id @ (sqrt(ev_id) * p_id) + U_exp @ (sqrt(ev_exp) * p_exp)``.
A ``p_exp`` of width E + S drives the speech basis with its last S entries (the paper's
40-parameter expression + speech experiment).

The importers of published model files (LSFM ``.mat``, the 4DFAB expression model, landmark
indices) and :func:`combine` live in :mod:`fitting.model_import`; this module is the model
itself and its own file format (``model.h5``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np


class ModelError(ValueError):
    """A model file is missing, malformed or inconsistent (reported as one line)."""


_ARRAYS = ("mean", "U_id", "ev_id", "U_exp", "ev_exp", "U_speech", "ev_speech", "trilist",
           "landmarks", "texture_mean", "U_tex", "ev_tex")

#: the seven discrete expression classes; a label is an index into this list.  Used by the
#: demo world's ``label`` column, EmotioNet's AU-derived labels (fitting.inputs), the
#: evaluation's expression recognition (Table 2), the report and the editor's presets;
#: :func:`fitting.demo_model.expression_prototypes` gives each class a parameter vector.
EXPRESSION_NAMES = ["neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]


@dataclass(eq=False)
class MorphableModel:
    mean: np.ndarray
    U_id: np.ndarray
    ev_id: np.ndarray
    U_exp: np.ndarray
    ev_exp: np.ndarray
    trilist: np.ndarray
    landmarks: np.ndarray
    U_speech: Optional[np.ndarray] = None
    ev_speech: Optional[np.ndarray] = None
    texture_mean: Optional[np.ndarray] = None
    U_tex: Optional[np.ndarray] = None
    ev_tex: Optional[np.ndarray] = None
    exp_names: list = field(default_factory=list)
    speech_names: list = field(default_factory=list)
    source: str = "unknown"

    def __post_init__(self):
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32).reshape(-1)
        self.U_id = _basis(self.U_id)
        self.ev_id = np.asarray(self.ev_id, dtype=np.float32).reshape(-1)
        self.U_exp = _basis(self.U_exp)
        self.ev_exp = np.asarray(self.ev_exp, dtype=np.float32).reshape(-1)
        if self.U_speech is not None:
            self.U_speech = _basis(self.U_speech)
            self.ev_speech = np.asarray(self.ev_speech, dtype=np.float32).reshape(-1)
        self.trilist = np.ascontiguousarray(self.trilist, dtype=np.int64)
        self.landmarks = np.asarray(self.landmarks, dtype=np.int64).reshape(-1)
        if self.texture_mean is not None:
            self.texture_mean = np.asarray(self.texture_mean, dtype=np.float32).reshape(-1, 3)
        if self.U_tex is not None:
            self.U_tex = _basis(self.U_tex)
            self.ev_tex = np.asarray(self.ev_tex, dtype=np.float32).reshape(-1)
        self.exp_names = [str(n) for n in (self.exp_names or [])]
        if not self.exp_names:
            self.exp_names = [f"exp_{i:02d}" for i in range(self.n_exp)]
        self.speech_names = [str(n) for n in (self.speech_names or [])]
        if self.U_speech is not None and not self.speech_names:
            self.speech_names = [f"speech_{i:02d}" for i in range(self.n_speech)]
        self._torch_cache = {}
        self._hash = None
        self.validate()

    # ------------------------------------------------------------------ properties
    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0] // 3

    @property
    def n_id(self) -> int:
        return self.U_id.shape[1]

    @property
    def n_exp(self) -> int:
        return self.U_exp.shape[1]

    @property
    def n_speech(self) -> int:
        return 0 if self.U_speech is None else self.U_speech.shape[1]

    @property
    def mean_shape(self) -> np.ndarray:
        """[N, 3] mean vertices."""
        return self.mean.reshape(-1, 3)

    @property
    def hash(self) -> str:
        """Content hash (sha256 of every array and name, first 16 hex digits)."""
        if self._hash is None:
            h = hashlib.sha256()
            for name in _ARRAYS:
                a = getattr(self, name)
                h.update(name.encode())
                if a is not None:
                    a = np.ascontiguousarray(a)
                    h.update(str(a.dtype).encode() + str(a.shape).encode())
                    h.update(a.tobytes())
            h.update("\n".join(self.exp_names + ["|"] + self.speech_names).encode())
            self._hash = h.hexdigest()[:16]
        return self._hash

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        n3 = self.mean.shape[0]
        if n3 == 0 or n3 % 3:
            raise ModelError(f"mean must have 3N entries, got {n3}")
        checks = [("U_id", self.U_id, self.ev_id), ("U_exp", self.U_exp, self.ev_exp)]
        if self.U_speech is not None:
            checks.append(("U_speech", self.U_speech, self.ev_speech))
        if self.U_tex is not None:
            checks.append(("U_tex", self.U_tex, self.ev_tex))
        for name, U, ev in checks:
            if U.ndim != 2 or U.shape[0] != n3:
                raise ModelError(f"{name} must be [3N={n3}, k], got {list(U.shape)}")
            if ev is None or ev.shape[0] != U.shape[1]:
                raise ModelError(f"{name}: {U.shape[1]} components but "
                                 f"{0 if ev is None else ev.shape[0]} eigenvalues")
            if not np.all(np.isfinite(U)):
                raise ModelError(f"{name} contains NaN or infinite values")
            if not np.all(np.isfinite(ev)) or np.any(ev <= 0):
                raise ModelError(f"eigenvalues of {name} must be finite and positive")
        if not np.all(np.isfinite(self.mean)):
            raise ModelError("mean contains NaN or infinite values")
        if self.trilist.ndim != 2 or self.trilist.shape[1] != 3:
            raise ModelError(f"trilist must be [T, 3], got {list(self.trilist.shape)}")
        if self.trilist.size and (self.trilist.min() < 0 or self.trilist.max() >= self.n_vertices):
            raise ModelError("trilist indexes vertices outside the mean shape")
        if self.landmarks.shape[0] != 68:
            raise ModelError(f"landmarks must hold 68 vertex indices, got {self.landmarks.shape[0]}")
        if self.landmarks.min() < 0 or self.landmarks.max() >= self.n_vertices:
            raise ModelError("landmark indices outside the mean shape")
        if self.texture_mean is not None and self.texture_mean.shape != (self.n_vertices, 3):
            raise ModelError(f"texture_mean must be [N={self.n_vertices}, 3]")
        if len(self.exp_names) != self.n_exp:
            raise ModelError(f"{len(self.exp_names)} exp_names for {self.n_exp} expression components")

    # ------------------------------------------------------------------ parameters
    def _ev(self, basis: str) -> np.ndarray:
        if basis == "id":
            return self.ev_id
        if basis == "exp":
            return self.ev_exp
        if basis == "speech":
            if self.ev_speech is None:
                raise ModelError("this model has no speech basis")
            return self.ev_speech
        if basis == "exp+speech":
            return np.concatenate([self.ev_exp, self._ev("speech")])
        if basis == "tex":
            return self.ev_tex
        raise ValueError(f"unknown basis {basis!r}")

    def normalise(self, p, basis: str = "exp"):
        """Raw coefficients -> normalised (divide by sqrt(eigenvalue)). [..., k] -> [..., k]."""
        return p / _like(np.sqrt(self._ev(basis)), p)

    def denormalise(self, p, basis: str = "exp"):
        """Normalised -> raw coefficients (multiply by sqrt(eigenvalue)). [..., k] -> [..., k]."""
        return p * _like(np.sqrt(self._ev(basis)), p)

    # ------------------------------------------------------------------ shapes
    def _exp_basis_np(self, width: int):
        if width <= self.n_exp:
            return self.U_exp[:, :width], self.ev_exp[:width]
        if self.U_speech is None or width > self.n_exp + self.n_speech:
            raise ModelError(f"p_exp has {width} entries; model has {self.n_exp} expression and "
                             f"{self.n_speech} speech components")
        extra = width - self.n_exp
        return (np.concatenate([self.U_exp, self.U_speech[:, :extra]], 1),
                np.concatenate([self.ev_exp, self.ev_speech[:extra]]))

    def instance(self, p_id=None, p_exp=None):
        """Shape for normalised parameters.

        p_id [K'] or [B, K'] (K' <= K, missing trailing entries are 0), p_exp [E'] or [B, E']
        (E' <= E + S).  Returns [N, 3] or [B, N, 3]; numpy in -> numpy out, torch in -> torch out.
        """
        if _is_torch(p_id) or _is_torch(p_exp):
            return self._instance_torch(p_id, p_exp)
        batched = any(p is not None and np.ndim(p) == 2 for p in (p_id, p_exp))
        B = None
        flat = self.mean.astype(np.float32)
        offs = []
        if p_id is not None:
            p = np.atleast_2d(np.asarray(p_id, dtype=np.float32))
            k = p.shape[1]
            if k > self.n_id:
                raise ModelError(f"p_id has {k} entries; model has {self.n_id} identity components")
            offs.append((p * np.sqrt(self.ev_id[:k])) @ self.U_id[:, :k].T)
        if p_exp is not None:
            p = np.atleast_2d(np.asarray(p_exp, dtype=np.float32))
            U, ev = self._exp_basis_np(p.shape[1])
            offs.append((p * np.sqrt(ev)) @ U.T)
        out = flat[None]
        for o in offs:
            out = out + o
        out = out.reshape(out.shape[0], -1, 3)
        return out if batched else out[0]

    def torch_bases(self, device=None, dtype=None):
        """Cached torch tensors (mean [3N], U_id*sqrt(ev) [3N,K], U_exp(+speech)*sqrt(ev) [3N,E+S])."""
        import torch

        dtype = dtype or torch.float32
        key = (str(device), str(dtype))
        if key not in self._torch_cache:
            U_e, ev_e = self._exp_basis_np(self.n_exp + self.n_speech)
            self._torch_cache[key] = (
                torch.as_tensor(self.mean, device=device, dtype=dtype),
                torch.as_tensor(self.U_id * np.sqrt(self.ev_id)[None], device=device, dtype=dtype),
                torch.as_tensor(U_e * np.sqrt(ev_e)[None], device=device, dtype=dtype),
            )
        return self._torch_cache[key]

    def _instance_torch(self, p_id, p_exp):
        import torch

        ref = p_id if _is_torch(p_id) else p_exp
        mean, Bid, Bexp = self.torch_bases(ref.device, ref.dtype)
        batched = any(p is not None and p.dim() == 2 for p in (p_id, p_exp))
        out = mean[None]
        if p_id is not None:
            p = torch.as_tensor(p_id, device=ref.device, dtype=ref.dtype)
            p = p[None] if p.dim() == 1 else p
            if p.shape[1] > self.n_id:
                raise ModelError(f"p_id has {p.shape[1]} entries; model has {self.n_id}")
            out = out + p @ Bid[:, : p.shape[1]].T
        if p_exp is not None:
            p = torch.as_tensor(p_exp, device=ref.device, dtype=ref.dtype)
            p = p[None] if p.dim() == 1 else p
            if p.shape[1] > Bexp.shape[1]:
                raise ModelError(f"p_exp has {p.shape[1]} entries; model has {Bexp.shape[1]}")
            out = out + p @ Bexp[:, : p.shape[1]].T
        out = out.reshape(out.shape[0], -1, 3)
        return out if batched else out[0]

    def landmarks_3d(self, p_id=None, p_exp=None):
        """[68, 3] (or [B, 68, 3]) landmark vertices of the instance."""
        return self.instance(p_id, p_exp)[..., self.landmarks, :]

    def texture(self, p_tex=None) -> np.ndarray:
        """[N, 3] albedo in [0, 1] for normalised texture parameters (mean when None)."""
        if self.texture_mean is None:
            return np.full((self.n_vertices, 3), 0.7, np.float32)
        t = self.texture_mean.reshape(-1).copy()
        if p_tex is not None and self.U_tex is not None:
            p = np.asarray(p_tex, np.float32)
            k = p.shape[-1]
            t = t + self.U_tex[:, :k] @ (p * np.sqrt(self.ev_tex[:k]))
        return np.clip(t.reshape(-1, 3), 0.0, 1.0)

    # ------------------------------------------------------------------ projection
    def project_expression(self, shape, with_speech: bool = False) -> np.ndarray:
        """The paper's projection p = U_exp^T (S - s_bar), normalised.

        shape [N, 3] / [3N] or [B, N, 3] -> [E] or [B, E] (E + S when ``with_speech``).
        """
        S = np.asarray(shape, np.float64)
        batched = S.ndim == 3 or (S.ndim == 2 and S.shape[1] != 3)
        S = S.reshape(S.shape[0], -1) if S.ndim == 3 else S.reshape(1, -1) if not batched else S
        U, ev = self._exp_basis_np(self.n_exp + (self.n_speech if with_speech else 0))
        p = (S - self.mean[None]) @ U.astype(np.float64) / np.sqrt(ev)[None]
        p = p.astype(np.float32)
        return p if batched else p[0]

    def vertex_rel_errors(self, p_ref, p_est, min_norm: float = 1e-6) -> np.ndarray:
        """Per-row 3D expression error ``||U (p_est - p_ref)|| / ||U p_ref||`` in vertex space.

        ``U p`` is the motion ``S_exp(p)`` that normalised parameters draw on the mesh
        (``U_exp sqrt(ev_exp)``, plus the speech basis for columns past E).  The bases have
        orthonormal columns, so ``||U d|| = ||sqrt(ev) * d||`` and no mesh is built.
        p_ref, p_est [N, E'] (compared on the first min(E', E'') columns, E' <= E + S).
        Returns float64 [M], M <= N: rows whose reference motion is below ``min_norm`` times
        the largest basis scale are dropped (the neutral face draws no motion)."""
        a = np.asarray(p_ref, np.float64)
        b = np.asarray(p_est, np.float64)
        if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
            raise ValueError(f"vertex_rel_errors: need [N, E] arrays of equal N, got {a.shape} and {b.shape}")
        e = min(a.shape[1], b.shape[1])
        _, ev = self._exp_basis_np(e)
        w = np.sqrt(np.asarray(ev, np.float64))
        ref = np.linalg.norm(a[:, :e] * w, axis=1)
        keep = ref >= min_norm * float(w.max())
        return np.linalg.norm((b[keep, :e] - a[keep, :e]) * w, axis=1) / ref[keep]

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``model.h5`` (docs/INTERFACES.md, Model file) atomically."""
        import h5py

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with h5py.File(tmp, "w", track_order=True) as f:
                for name in _ARRAYS:
                    a = getattr(self, name)
                    if a is not None:
                        f.create_dataset(name, data=a, track_times=False)
                str_dt = h5py.string_dtype("utf-8")
                f.create_dataset("exp_names", data=np.array(self.exp_names, dtype=object),
                                 dtype=str_dt, track_times=False)
                if self.speech_names:
                    f.create_dataset("speech_names", data=np.array(self.speech_names, dtype=object),
                                     dtype=str_dt, track_times=False)
                f.attrs["source"] = self.source
                f.attrs["hash"] = self.hash
                f.attrs["format"] = "slidergan-3dmm/1"
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MorphableModel":
        """Read ``model.h5``; raise :class:`ModelError` with a one-line reason when malformed."""
        import h5py

        path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        try:
            f = h5py.File(path, "r")
        except OSError:
            raise ModelError(f"{path}: not an HDF5 model file") from None
        with f:
            missing = [k for k in ("mean", "U_id", "ev_id", "U_exp", "ev_exp", "trilist", "landmarks")
                       if k not in f]
            if missing:
                raise ModelError(f"{path}: missing dataset(s) {', '.join(missing)}")
            kw = {k: f[k][()] for k in _ARRAYS if k in f}
            kw["exp_names"] = [_s(x) for x in f["exp_names"][()]] if "exp_names" in f else []
            kw["speech_names"] = [_s(x) for x in f["speech_names"][()]] if "speech_names" in f else []
            kw["source"] = _s(f.attrs.get("source", "unknown"))
            stored = f.attrs.get("hash")
        try:
            m = cls(**kw)
        except ModelError as e:
            raise ModelError(f"{path}: {e}") from None
        if stored is not None and _s(stored) != m.hash:
            raise ModelError(f"{path}: content hash mismatch (file corrupted or edited)")
        return m

    def __repr__(self) -> str:
        return (f"MorphableModel(source={self.source!r}, N={self.n_vertices}, K={self.n_id}, "
                f"E={self.n_exp}, S={self.n_speech}, hash={self.hash})")


# ---------------------------------------------------------------------- helpers
def _s(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _basis(U) -> np.ndarray:
    return np.ascontiguousarray(U, dtype=np.float32)


def _is_torch(x) -> bool:
    return x is not None and type(x).__module__.startswith("torch")


def _like(a: np.ndarray, ref):
    if _is_torch(ref):
        import torch

        return torch.as_tensor(a, device=ref.device, dtype=ref.dtype)
    return a


def orthonormalise(U: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning U (thin QR, sign fixed so diag(R) > 0). [3N,k] -> [3N,k]."""
    Q, R = np.linalg.qr(np.asarray(U, np.float64))
    return Q * np.sign(np.where(np.diag(R) == 0, 1, np.diag(R)))[None]


def read_model_hash(path: str | os.PathLike) -> str:
    """The content hash of a ``model.h5`` (its stored ``hash`` attribute when present — cheap
    — else by loading and hashing the model)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            h = f.attrs.get("hash")
        if h is not None:
            return _s(h)
    except OSError:
        pass
    return MorphableModel.load(path).hash
