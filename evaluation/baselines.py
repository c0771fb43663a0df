"""Baselines reported beside every checkpoint, as pseudo-networks
(:class:`evaluation.networks.PseudoNetwork`) that go through the same protocol functions.

* :class:`CopyInput` (``copy-input``): G = identity, the output is the unedited input. A
  model that does nothing scores exactly this; the project's goals are written as ratios to it
  (``ied_vs_copy``).
* :class:`WarpOracle` (``oracle-3d``, "3D warp oracle"): the image's own 3D fit re-rendered
  with the target expression and pasted over the inpainted background, i.e. the training warps
  (:class:`fitting.warp.Warper` ``prepare`` + ``render``, the calls the warps stage makes per
  photo, with the warps stage's recorded options). It only edits images whose fit was
  registered (:meth:`WarpOracle.register`); any other image makes the protocol unavailable.

Neither baseline has a discriminator: ``regress`` uses a named checkpoint's D (the first one
evaluated; the report says which), so D-based numbers of a baseline read "what that D
says about doing nothing / about the warp".
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from evaluation.data import Unavailable
from evaluation.metrics import to_uint8
from evaluation.networks import Networks, PseudoNetwork, regress

COPY = "copy-input"
ORACLE = "oracle-3d"
NAMES = (COPY, ORACLE)


class _WithRegressor(PseudoNetwork):
    """Regression by a named checkpoint's D (``regressor``); none -> Unavailable."""

    def __init__(self, name: str, n_params: int, regressor: Networks | None, model_config=None):
        super().__init__(name, n_params, model_config if model_config is not None else
                         (regressor.model_config if regressor is not None else {}))
        self.regressor = regressor

    @property
    def regressor_name(self) -> str | None:
        return None if self.regressor is None else self.regressor.name

    def regress(self, images) -> np.ndarray:
        if self.regressor is None:
            raise Unavailable(f"{self.name} has no discriminator and no checkpoint's D was given")
        return regress(self.regressor, images)


class CopyInput(_WithRegressor):
    """G = identity: ``generate(images, p)`` returns the images as float32 in [0, 1]."""

    note = "G = identity: the output is the unedited input"

    def __init__(self, n_params: int, regressor: Networks | None = None, model_config=None):
        super().__init__(COPY, n_params, regressor, model_config)

    def generate(self, images, p) -> np.ndarray:
        a = np.asarray(images)
        return (a.astype(np.float32) / 255.0) if a.dtype == np.uint8 else a.astype(np.float32)


def image_digest(image) -> str:
    """Content key of one uint8 image [H, W, 3] (sha1 of shape + bytes)."""
    a = np.ascontiguousarray(to_uint8(image))
    return hashlib.sha1(repr(a.shape).encode() + a.tobytes()).hexdigest()


@dataclass
class WarpFit:
    """What a warp of one image needs: the photo it was fitted on (a path, or the array
    itself when the image *is* the photo, e.g. a 4DFAB render), the fit ``p_id`` [K'],
    ``p_exp`` [E'] (normalised), ``camera`` [7] and ``align`` [2, 3] (photo -> crop pixels)."""

    photo: object
    p_id: np.ndarray
    p_exp: np.ndarray
    camera: np.ndarray
    align: np.ndarray

    def load_photo(self) -> np.ndarray:
        if isinstance(self.photo, np.ndarray):
            return self.photo
        from fitting.images import ImageReject, load_image

        try:
            return load_image(self.photo)
        except ImageReject as e:
            raise Unavailable(f"{ORACLE}: photo {self.photo} {e.reason}") from None


IDENTITY_ALIGN = np.array([[1, 0, 0], [0, 1, 0]], np.float32)


def warps_options(run: Path, fallback: dict | None = None) -> tuple[dict, str]:
    """The warp options the training warps were made with: ``RUN/warps/_stage.json``'s
    ``params.warps`` (+ ``params.backend``); else the config's ``warps:`` section.
    Returns (options, where they came from)."""
    meta = Path(run) / "warps" / "_stage.json"
    if meta.is_file():
        try:
            params = json.loads(meta.read_text()).get("params") or {}
        except (OSError, ValueError):
            params = {}
        if isinstance(params.get("warps"), dict):
            return dict(params["warps"], backend=params.get("backend", "fast")), str(meta)
    return dict(fallback or {}), "config warps: section (no warps stage)"


def make_warper(model, size: int, options: dict):
    """:class:`fitting.warp.Warper` configured from warps-stage options exactly as
    ``WarpsStage.warper`` maps them (space, mouth -> cavity, supersample, backend)."""
    from fitting.warp import Warper

    return Warper(model, size=int(size), backend=str(options.get("backend", "fast")),
                  space=str(options.get("space", "crop")), cavity=bool(options.get("mouth", True)),
                  supersample=int(options.get("supersample", 1)))


class WarpOracle(_WithRegressor):
    """The 3D warp oracle: ``generate(images, p)`` warps each registered image's fit to p.

    ``warper_for(size) -> Warper`` builds the warper of a crop size (cached). Prepared
    per-photo states (:class:`fitting.warp.WarpSource`) are kept for the last
    ``cache`` photos (each ~1.5 MB on the 53k-vertex demo model)."""

    note = ("3D warp oracle: the image's 3D fit rendered with the target expression and pasted over the "
            "inpainted background, like the training warps")

    def __init__(self, n_params: int, warper_for: Callable[[int], object], regressor: Networks | None = None,
                 model_config=None, cache: int = 64):
        super().__init__(ORACLE, n_params, regressor, model_config)
        self._warper_for = warper_for
        self._warpers: dict = {}
        self._fits: dict[str, WarpFit] = {}
        self._missing: dict[str, str] = {}
        self._prepared: OrderedDict = OrderedDict()
        self._cache = int(cache)

    def register(self, images, fits) -> None:
        """Make ``images`` [N,H,W,3] editable: ``fits[i]`` (:class:`WarpFit`) is image i's fit."""
        imgs = to_uint8(images)
        if len(imgs) != len(fits):
            raise ValueError(f"register: {len(imgs)} images but {len(fits)} fits")
        for im, f in zip(imgs, fits):
            self._fits.setdefault(image_digest(im), f)

    def unavailable(self, images, reason: str) -> None:
        """Record why ``images`` have no fit (the reason the protocol reports)."""
        for im in to_uint8(images):
            self._missing.setdefault(image_digest(im), reason)

    def warper(self, size: int):
        if size not in self._warpers:
            self._warpers[size] = self._warper_for(size)
        return self._warpers[size]

    def _source(self, key: str, size: int):
        k = (key, size)
        if k in self._prepared:
            self._prepared.move_to_end(k)
            return self._prepared[k]
        f = self._fits[key]
        src = self.warper(size).prepare(f.load_photo(), f.p_id, f.p_exp, f.camera, f.align)
        self._prepared[k] = src
        while len(self._prepared) > self._cache:
            self._prepared.popitem(last=False)
        return src

    def generate(self, images, p) -> np.ndarray:
        imgs = to_uint8(images)
        p = np.asarray(p, np.float32)
        keys = [image_digest(im) for im in imgs]
        for k in keys:
            if k not in self._fits:
                raise Unavailable(self._missing.get(k, f"{ORACLE}: no 3D fit is known for an image of this protocol"))
        out = np.empty(imgs.shape[:3] + (3,), np.float32)
        size = int(imgs.shape[1])
        order: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            order.setdefault(k, []).append(i)
        for k, rows in order.items():
            src = self._source(k, size)
            out[rows] = self.warper(size).render(src, p[rows]).astype(np.float32) / 255.0
        return out
