"""What determines the demo world and where its items live: :class:`WorldParams` (hashed
into ``_demo.json``), the seed streams (:func:`rng_for`), the item keys, and the per-process
model of a world (:func:`load_model`)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

FORMAT = "slidergan-demo/1"
GENERATOR_VERSION = "2"        # 2: LRW-style .mp4 videos and LRW-3D-style speech files
MARKER = "_demo.json"
CHUNKS = "_demo_chunks"
KINDS = ("emotionet", "4dfab", "lrw")
DOMAIN = {"photo": 1, "photo_id": 2, "mesh_id": 3, "mesh_session": 4, "mesh_frame": 5,
          "lrw": 6, "lrw_id": 7, "preview": 8, "calib": 9, "calib_id": 10}
#: identity labels are unique across the three datasets
IDENTITY_OFFSET = {"emotionet": 0, "4dfab": 100000, "lrw": 200000}


def rng_for(seed: int, domain: str, *index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), DOMAIN[domain], *[int(i) for i in index]])


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class WorldParams:
    """Everything that determines the world's bytes (hashed into ``_demo.json``)."""

    seed: int
    n_id: int
    n_exp: int
    n_speech: int
    faces: int
    identities: int
    identities_4dfab: int
    sessions_4dfab: int
    frames_4dfab: int
    lrw_sequences: int
    lrw_frames: int
    lrw_size: int
    min_size: int
    max_size: int
    max_yaw: float
    camera_dist: float
    prototype_fraction: float
    jpeg_quality: int
    backend: str

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["generator"] = GENERATOR_VERSION
        return d

    def validate(self) -> None:
        from pipeline.config import ConfigError

        for name in ("faces", "identities_4dfab", "sessions_4dfab", "frames_4dfab", "lrw_sequences",
                     "lrw_frames"):
            if getattr(self, name) < 0:
                raise ConfigError(f"demo.{name} must be >= 0, got {getattr(self, name)}")
        if self.identities < 1:
            raise ConfigError(f"demo.identities must be >= 1, got {self.identities}")
        if not 32 <= self.min_size <= self.max_size:
            raise ConfigError(f"need 32 <= demo.min_size <= demo.max_size, got {self.min_size}, {self.max_size}")
        if self.lrw_size < 32:
            raise ConfigError(f"demo.lrw_size must be >= 32, got {self.lrw_size}")
        if not 0.0 <= self.max_yaw <= 89.0:
            raise ConfigError(f"demo.max_yaw must be in [0, 89] degrees, got {self.max_yaw}")
        if not 0.0 <= self.prototype_fraction <= 1.0:
            raise ConfigError(f"demo.prototype_fraction must be in [0, 1], got {self.prototype_fraction}")
        if self.camera_dist < 0 or 0 < self.camera_dist < 2.5:
            raise ConfigError(f"demo.camera_dist must be 0 (weak perspective) or >= 2.5, got {self.camera_dist}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"demo.jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.backend not in ("fast", "pyrender"):
            raise ConfigError(f"render.backend must be fast or pyrender, got {self.backend!r}")


def load_model(path: str):
    """``(model, expression prototypes [7, E])`` of ``model.h5``, loaded once per process
    (:func:`pipeline.cache.cached`; the tasks of one worker share it; the file's mtime is in
    the key, so a rebuilt model is reloaded).  One model is kept."""
    from fitting.demo_model import expression_prototypes
    from fitting.model import MorphableModel
    from pipeline.cache import cached

    def make():
        model = MorphableModel.load(path)
        return model, expression_prototypes(model)

    return cached(("demo-model", str(path), os.stat(path).st_mtime_ns), make, keep=1)


# ---------------------------------------------------------------------------- item keys
def photo_key(i: int, n: int = 0) -> str:
    """``00000.jpg``; more digits when there are over 100,000 photos, so keys sort numerically."""
    return f"{i:0{max(5, len(str(max(n - 1, 0))))}d}.jpg"


def mesh_items(P: WorldParams) -> list[tuple[int, int, int]]:
    return [(m, s, f) for m in range(P.identities_4dfab) for s in range(P.sessions_4dfab)
            for f in range(P.frames_4dfab)]


def mesh_key(m: int, s: int, f: int) -> str:
    return f"id{m:03d}/s{s:02d}/{f:03d}"


#: LRW-style words of the demo videos, and the split of sequence ``s`` (cycle, so that even
#: two sequences give a training and a test video)
LRW_WORDS = ("ABOUT", "WORLD", "THINK")
LRW_SPLIT_CYCLE = ("train", "test", "val", "train")
#: the demo videos' H.264 quality (x264 CRF; 17 is visually lossless)
LRW_CRF = 17


def lrw_video_id(seq: int) -> str:
    """The LRW-style id ``<WORD>/<split>/<WORD>_<id>`` of demo sequence ``seq`` (its video is
    ``D/lrw/lipread_mp4/<id>.mp4``, its speech parameters ``D/lrw/lrw3d/<id>.npy``)."""
    word = LRW_WORDS[seq % len(LRW_WORDS)]
    split = LRW_SPLIT_CYCLE[seq % len(LRW_SPLIT_CYCLE)]
    return f"{word}/{split}/{word}_{seq + 1:05d}"
