"""Reading a run folder's test material for evaluation (docs/INTERFACES.md, Run folder).

Each source is optional: a missing stage makes the metrics that need it ``null`` with the
reason recorded in :class:`Unavailable` (never an exception for the user).  A *corrupt*
``model.h5`` is different: a one-line ConfigError (exit 2), not null metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class Unavailable(Exception):
    """A metric or figure cannot be computed; ``str(e)`` is the reason shown in the report."""


def _shardset(path: Path, what: str):
    from pipeline.shards import ShardSet, ShardError

    if not path.is_dir():
        raise Unavailable(f"no {what} stage at {path}")
    try:
        return ShardSet(path)
    except ShardError as e:
        raise Unavailable(f"{what} stage unusable: {e}")


def _columns(ds, names, rows=None, optional=()) -> dict:
    have = set(ds.datasets)
    out = {}
    for n in list(names) + list(optional):
        if n not in have:
            if n in optional:
                continue
            raise Unavailable(f"{ds.dir} has no dataset {n!r}")
        out[n] = ds.read(n) if rows is None else ds.read(n, rows)
    return out


from pipeline.split import held_out_identity, holdout_rows  # noqa: E402,F401 (shared with train/)


class LazyImages:
    """Read-on-index view of a stage's ``image`` column (optionally a subset of rows), so that
    a large stage is never loaded whole: ``imgs[idx]`` -> uint8 [len(idx), H, W, 3].

    Hand-written (a dozen lines) because ShardSet reads by row index but is not array-like."""

    def __init__(self, ds, rows=None):
        self.ds = ds
        self.rows = np.arange(len(ds)) if rows is None else np.asarray(rows, np.int64)
        _, shape = ds.datasets["image"]
        self.shape = (len(self.rows),) + tuple(shape[1:])
        self.dtype = np.uint8

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            return self.ds.read("image", int(self.rows[idx]))
        sel = self.rows[idx]
        if len(sel) == 0:
            return np.zeros((0,) + self.shape[1:], np.uint8)
        return self.ds.read("image", sel)


@dataclass
class RealSet:
    """Aligned real photos (fit-emotionet): images uint8 [N,H,W,3] (:class:`LazyImages`),
    p_exp [N,E], identity [N], label [N] (-1 none), key [N], test bool [N] (held-out identities)."""

    images: LazyImages
    p_exp: np.ndarray
    identity: np.ndarray
    label: np.ndarray
    key: np.ndarray
    test: np.ndarray
    # the 3D fit behind each crop (the warp oracle): None when the stage lacks the columns
    p_id: np.ndarray | None = None        # [N, K]
    camera: np.ndarray | None = None      # [N, 7] in photo pixels
    align: np.ndarray | None = None       # [N, 2, 3] photo -> crop
    photo_root: Path | None = None        # folder the keys are relative to (fit stage's params.root)
    fit_missing: str | None = None        # why the fit is unusable for warps (None: usable)


@dataclass
class FabSet:
    """4DFAB renders of held-out identities (split == 1): images (:class:`LazyImages`),
    p_exp [N,E], group [N]."""

    images: LazyImages
    p_exp: np.ndarray
    group: np.ndarray
    key: np.ndarray
    p_id: np.ndarray | None = None        # [N, K] joint fit of the rendered mesh (project-4dfab)
    camera: np.ndarray | None = None      # [N, 7] the render's camera (in the crop's pixels)


@dataclass
class EvalData:
    run: Path
    model: object = None                 # fitting.model.MorphableModel
    real: RealSet | None = None
    fab: FabSet | None = None
    lrw_dir: Path | None = None           # RUN/lrw-fits (Table 3)
    missing: dict = field(default_factory=dict)  # source -> reason


def load_real(run: Path, test_fraction: float, seed: int) -> RealSet:
    ds = _shardset(run / "fits", "fits")
    cols = _columns(ds, ["p_exp", "identity"], optional=["label", "key"])
    n = len(ds)
    if n == 0:
        raise Unavailable("fits stage has no rows")
    ident = np.asarray(cols["identity"], np.int64)
    label = np.asarray(cols.get("label", np.full(n, -1)), np.int64)
    key = np.asarray(cols.get("key", np.array([str(i) for i in range(n)], object)))
    test = holdout_rows(ident, key, test_fraction, seed)  # the rows train/ leaves out
    if "image" not in ds.datasets:
        raise Unavailable(f"{ds.dir} has no dataset 'image'")
    images = LazyImages(ds)
    out = RealSet(images, np.asarray(cols["p_exp"], np.float32), ident, label, key, test)
    have = set(ds.datasets)
    lacking = [c for c in ("p_id", "camera", "align", "key") if c not in have]
    if lacking:
        out.fit_missing = f"{ds.dir} has no {', '.join(lacking)} (needed to warp the photos)"
    else:
        out.p_id, out.camera, out.align = (np.asarray(ds.read(c), np.float32) for c in ("p_id", "camera", "align"))
        out.photo_root, out.fit_missing = _photo_root(run, ds)
    return out


def _photo_root(run: Path, ds) -> tuple[Path | None, str | None]:
    """The folder of the fitted photos: the fit stage's recorded ``params.root``; when that
    folder is gone (a copied run folder), ``RUN/<its name>``. Returns (root, why-not)."""
    root = (ds.attrs.get("params") or {}).get("root")
    if not root:
        return None, f"{ds.dir}: the fit stage does not record its images folder"
    root = Path(root)
    if root.is_dir():
        return root, None
    if (run / root.name).is_dir():
        return run / root.name, None
    return None, f"the fitted photos' folder {root} is gone"


def load_fab(run: Path) -> FabSet:
    ds = _shardset(run / "4dfab-params", "4dfab-params")
    cols = _columns(ds, ["p_exp", "group"], optional=["split", "key", "p_id", "camera"])
    split = np.asarray(cols.get("split", np.ones(len(ds))), np.int64)
    rows = np.nonzero(split == 1)[0]
    if len(rows) == 0:
        raise Unavailable("4dfab-params has no held-out (split == 1) renders")
    key = cols.get("key", np.array([str(i) for i in range(len(ds))], object))
    if "image" not in ds.datasets:
        raise Unavailable(f"{ds.dir} has no dataset 'image'")
    fit = {c: np.asarray(cols[c][rows], np.float32) if c in cols else None for c in ("p_id", "camera")}
    return FabSet(LazyImages(ds, rows), np.asarray(cols["p_exp"][rows], np.float32),
                  np.asarray(cols["group"][rows], np.int64), np.asarray(key)[rows], **fit)


def load_data(run, test_fraction: float = 0.17, seed: int = 0) -> EvalData:
    """Everything evaluation reads from a run folder; absent parts are listed in ``missing``."""
    run = Path(run)
    data = EvalData(run=run)
    # An absent model.h5 only disables what needs it; a corrupt one is an error (exit 2):
    # metrics silently null because of a damaged file would read as results.
    from fitting.model import ModelError, MorphableModel
    from pipeline.config import ConfigError

    if not (run / "model.h5").is_file():
        data.missing["model"] = f"no 3DMM at {run / 'model.h5'}"
    else:
        try:
            data.model = MorphableModel.load(run / "model.h5")
        except (ModelError, OSError) as e:
            msg = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise ConfigError(f"cannot read the run's model {run / 'model.h5'}: {msg}") from None
    for name, fn in (("real", lambda: load_real(run, test_fraction, seed)), ("fab", lambda: load_fab(run))):
        try:
            setattr(data, name, fn())
        except Unavailable as e:
            data.missing[name] = str(e)
    if (run / "lrw-fits" / "_stage.json").is_file():      # Table 3: the fit-lrw stage (evaluation/lrw.py)
        data.lrw_dir = run / "lrw-fits"
    else:
        data.missing["lrw"] = f"no fit-lrw stage at {run / 'lrw-fits'} (run slidergan fit-lrw)"
    return data


def balanced_rows(labels, classes, per_class: int, seed: int = 0) -> np.ndarray:
    """At most ``per_class`` rows of each class (a seeded random choice), sorted -> int64 [M]."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = []
    for c in classes:
        idx = np.nonzero(labels == c)[0]
        if len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        out.append(idx)
    return np.sort(np.concatenate(out)).astype(np.int64) if out else np.zeros(0, np.int64)
