"""The training variants selected by ``--variant`` (docs/training.md).

Each variant fixes the adversarial objective and which of L_gen / L_id and the paired
(3D-warp) phase it uses; every other term and weight comes from the preset.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import ConfigError


@dataclass(frozen=True)
class Variant:
    name: str
    adv: str          # "rad" | "wgp" (model.losses.ADV_KINDS)
    use_gen: bool     # L_gen on paired samples
    use_id: bool      # L_id with the frozen identity embedder
    paired: bool      # run the paired phase on warps


VARIANTS = {
    "rad": Variant("rad", "rad", True, True, True),
    "wgp": Variant("wgp", "wgp", True, True, True),
    "ganimation": Variant("ganimation", "wgp", False, False, False),
    "rad-no-id": Variant("rad-no-id", "rad", True, False, True),
    "rad-no-gen": Variant("rad-no-gen", "rad", False, True, True),
    "rad-no-id-gen": Variant("rad-no-id-gen", "rad", False, False, True),
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})") from None
