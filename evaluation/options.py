"""What ``slidergan evaluate`` is asked to do: :class:`EvalOptions` (the ``evaluate:`` config
section), the device, the expression reader and identity embedder it names, and the
names of the evaluated checkpoints."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from evaluation import metrics
from evaluation.baselines import COPY, ORACLE
from evaluation.networks import Networks
from pipeline.config import ConfigError

#: names a checkpoint cannot take (the metrics.json top-level keys and the baselines)
RESERVED_NAMES = ("models", "baselines", "reader", "curves", "schema", COPY, ORACLE)


@dataclass
class EvalOptions:
    """The ``evaluate:`` config section (config/demo.yaml) plus the global seed."""

    pairs: int = 64
    grid_step: float = 0.2
    grid_params: int = 10
    test_images: int = 32
    test_fraction: float = 0.17
    identity: str = "auto"            # auto | dlib | pixels | PATH (train-identity / ArcFace weights)
    refit: bool = True
    refit_images: int = 0             # refit only the first N edits (0 = all test_images)
    figures: bool = True
    lrw_pairs: int = 32
    max_per_class: int = 200          # labelled photos per expression class (classifier, presets)
    figure_photos: int = 4
    device: str = "auto"
    reader: str = "auto"              # auto (RUN/reader/reader.pt when present) | none | PATH
    seed: int = 0
    fit: dict = field(default_factory=dict)   # the fit: section (refit options)
    warps: dict = field(default_factory=dict)  # the warps: section (oracle, when RUN/warps records none)

    @classmethod
    def from_config(cls, cfg) -> "EvalOptions":
        sec = cfg.section("evaluate") if "evaluate" in cfg else {}
        names = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in sec.items() if k in names}
        if "seed" in cfg:
            kw["seed"] = int(cfg.seed)
        if "fit" in cfg:
            kw["fit"] = cfg.section("fit")
        if "warps" in cfg:
            kw["warps"] = cfg.section("warps")
        opt = cls(**kw)
        if opt.grid_step <= 0 or opt.grid_step > 2:
            raise ConfigError(f"evaluate.grid_step must be in (0, 2], got {opt.grid_step}")
        for k in ("pairs", "test_images", "lrw_pairs", "max_per_class", "refit_images"):
            if getattr(opt, k) < 0:
                raise ConfigError(f"evaluate.{k} must be >= 0, got {getattr(opt, k)}")
        if not 0 < opt.test_fraction < 1:
            raise ConfigError(f"evaluate.test_fraction must be in (0, 1), got {opt.test_fraction}")
        if not isinstance(opt.reader, str) or not opt.reader:
            raise ConfigError(f"evaluate.reader must be auto, none or a reader file path, got {opt.reader!r}")
        return opt


def device_name(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but no CUDA device is available (use auto or cpu)")
    if not (name == "cpu" or name.startswith("cuda")):
        raise ConfigError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)")
    return name


def load_reader_option(opt: EvalOptions, run: Path, device: str = "cpu"):
    """The independent expression reader of ``evaluate.reader``: (reader | None, reason | None).

    ``auto``: ``RUN/reader/reader.pt`` when present, else none with the reason; ``none``: off;
    anything else is a path that must load (ConfigError otherwise: the user named it)."""
    choice = str(opt.reader)
    if choice == "none":
        return None, "disabled (evaluate.reader=none)"
    try:
        from train.reader import default_reader_path, load_reader
    except ImportError as e:
        if choice == "auto":
            return None, f"no reader: train.reader cannot be imported ({e})"
        raise ConfigError(f"evaluate.reader={choice}: train.reader cannot be imported ({e})") from None
    if choice == "auto":
        path = default_reader_path(run)
        if not path.is_file():
            return None, "no reader: run slidergan train-reader"
    else:
        path = Path(choice)
    return load_reader(path, device=device), None   # ConfigError (one line) when unusable


def identity_candidates(run: Path, checkpoints: Sequence[str | Path] = ()) -> list[Path]:
    """Where ``auto`` looks for train-identity weights: ``RUN/identity.pt``,
    ``RUN/identity/identity.pt``, then ``T/identity.pt`` next to each checkpoint's
    ``T/checkpoints/`` folder (where ``slidergan train`` writes the embedder it trained)."""
    out = [run / "identity.pt", run / "identity" / "identity.pt"]
    for c in checkpoints:
        out.append(Path(c).resolve().parent.parent / "identity.pt")
    return out


def _dlib_available() -> bool:
    try:
        import dlib  # noqa: F401
        import face_recognition_models  # noqa: F401
    except ImportError:
        return False
    return True


def make_identity_embedder(opt: EvalOptions, run: Path, checkpoints: Sequence[str | Path] = ()
                           ) -> metrics.IdentityEmbedder:
    """The embedder of ``identity_cos`` (one for all checkpoints, so they are comparable).

    ``auto``: the first train-identity file of :func:`identity_candidates`, else dlib's ResNet
    descriptor, else 32x32 grey pixels; ``dlib`` / ``pixels`` force one; any other value is a
    path to identity weights (our train-identity file or an InsightFace iresnet state_dict).
    """
    choice = opt.identity
    if choice == "dlib":
        return metrics.DlibEmbedder()
    if choice == "pixels":
        return metrics.PixelEmbedder()
    path = None
    if choice == "auto":
        path = next((c for c in identity_candidates(run, checkpoints) if c.is_file()), None)
        if path is None:
            return metrics.DlibEmbedder() if _dlib_available() else metrics.PixelEmbedder()
    else:
        path = Path(choice)
        if not path.is_file():
            raise ConfigError(f"evaluate.identity: weights not found: {choice}")
    import torch

    from model.identity import IdentityWeightsError, build_identity

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = build_identity(state)
    except (IdentityWeightsError, RuntimeError, OSError, ValueError) as e:
        raise ConfigError(f"identity weights {path}: {str(e).splitlines()[0]}")
    return metrics.TorchEmbedder(net, name=f"trained identity embedder ({path.name})",
                                 note=f"loaded from {path}; G was trained against this embedder when "
                                      f"lambda_id > 0, see identity_cos_dlib for an independent check",
                                 device=device_name(opt.device))


def unique_names(nets: Sequence[Networks]) -> None:
    """Name each checkpoint by its variant; repeated variants get -2, -3, ... (in order), and
    so do the names metrics.json reserves (:data:`RESERVED_NAMES`)."""
    seen: dict[str, int] = {r: 1 for r in RESERVED_NAMES}
    for n in nets:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", str(n.variant or "")).strip(".-") or "model"  # a folder name
        seen[base] = seen.get(base, 0) + 1
        n.name = base if seen[base] == 1 else f"{base}-{seen[base]}"
