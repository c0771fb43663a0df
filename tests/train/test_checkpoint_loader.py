"""The one checkpoint loader (train.checkpoint.load_checkpoint / load_networks) and the two
callers that wrap it (evaluation.networks.load_checkpoint, workflows.editor.core): every
check, each failure one line, the same message whichever entry point reads the file."""
import re

import pytest
import torch

from model.networks import build_networks
from pipeline.config import ConfigError
from train import checkpoint as ck

CFG = {"image_size": 16, "c_dim": 6, "g_conv_dim": 4, "g_repeat": 1, "d_conv_dim": 4, "d_repeat": 2}


def _state(**change) -> dict:
    torch.manual_seed(0)
    G, D = build_networks(CFG)
    state = {"format": ck.FORMAT, "variant": "rad", "step": 3, "phase": "paired", "model_config": dict(CFG),
             "G": G.state_dict(), "D": D.state_dict()}
    state.update(change)
    return {k: v for k, v in state.items() if v is not ...}


def _save(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def _loaders():
    from evaluation.networks import load_checkpoint as eval_load
    from workflows.editor.core import load_checkpoint as editor_load
    return {"train": ck.load_checkpoint, "evaluation": eval_load, "editor": editor_load}


def _error(load, path) -> str:
    with pytest.raises(ConfigError) as e:
        load(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path.name) in msg
    return msg


def test_a_good_checkpoint_loads_the_same_through_every_entry_point(tmp_path):
    path = _save(tmp_path / "T" / "checkpoints" / "step-0000003.pt", _state())
    loads = _loaders()
    ckpt = loads["train"](path)
    assert ckpt["variant"] == "rad" and ckpt["model_config"] == CFG
    nets = loads["evaluation"](path)
    assert (nets.variant, nets.step, nets.n_params, nets.path) == ("rad", 3, 6, str(path))
    G, D = ck.load_networks(ckpt)
    x, p = torch.rand(1, 3, 16, 16) * 2 - 1, torch.rand(1, 6)
    with torch.no_grad():
        assert torch.equal(nets.G(x, p)[0], G(x, p)[0]) and torch.equal(nets.D(x)[1], D(x)[1])
    ed = loads["editor"](path)
    assert ed["_path"] == str(path)
    # a training folder or its checkpoints/ folder: the newest complete step file
    newer = _save(tmp_path / "T" / "checkpoints" / "step-0000009.pt", _state(step=9))
    for where in (tmp_path / "T", tmp_path / "T" / "checkpoints"):
        assert ck.resolve_checkpoint(where) == newer
        assert loads["train"](where)["step"] == 9 and loads["evaluation"](where).step == 9
        assert loads["editor"](where)["_path"] == str(newer)
    flat = _save(tmp_path / "flat" / "latest.pt", _state(step=4))
    assert ck.resolve_checkpoint(tmp_path / "flat") == flat
    assert loads["train"](tmp_path / "flat")["step"] == 4


@pytest.mark.parametrize("case,match", [
    ("missing", "checkpoint not found"),
    ("junk", "cannot load checkpoint .*not a readable checkpoint"),
    ("truncated", "cannot load checkpoint .*not a readable checkpoint"),
    ("list", "not a SliderGAN checkpoint \\(format 'list'"),
    ("format", "not a SliderGAN checkpoint \\(format 'something-else/1'"),
    ("no-format", "is not a slidergan-ckpt/1 checkpoint"),
    ("no-variant", "checkpoint has no variant name"),
    ("no-config", "checkpoint has no 'model_config' entry"),
    ("config-key", "model_config misses keys \\['d_repeat'\\]"),
    ("config-size", "image_size 16 is not divisible by 2\\^d_repeat"),
    ("no-G", "checkpoint has no 'G' entry"),
])
def test_every_check_one_line_same_everywhere(tmp_path, case, match):
    good = _state()
    path = tmp_path / f"{case}.pt"
    if case == "junk":
        path.write_bytes(b"not a checkpoint")
    elif case == "truncated":
        _save(path, good)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case != "missing":
        bad = {"list": [1, 2], "format": dict(good, format="something-else/1"),
               "no-format": dict(good, format=...), "no-variant": dict(good, variant=...),
               "no-config": dict(good, model_config=...),
               "config-key": dict(good, model_config={k: v for k, v in CFG.items() if k != "d_repeat"}),
               "config-size": dict(good, model_config=dict(CFG, d_repeat=5)), "no-G": dict(good, G=...)}[case]
        _save(path, bad if isinstance(bad, list) else {k: v for k, v in bad.items() if v is not ...})
    messages = {name: _error(load, path) for name, load in _loaders().items()}
    for msg in messages.values():
        assert re.search(match, msg), msg
    assert len(set(messages.values())) == 1, messages


def test_variant_expectation_d_requirement_and_weights(tmp_path):
    path = _save(tmp_path / "gan.pt", _state(variant="ganimation"))
    with pytest.raises(ConfigError, match="holds a 'ganimation' run, not 'rad'"):
        ck.load_checkpoint(path, variant="rad")
    assert ck.load_checkpoint(path, variant="ganimation")["variant"] == "ganimation"
    no_d = _save(tmp_path / "no-d.pt", _state(D=...))
    from evaluation.networks import load_checkpoint as eval_load
    from workflows.editor.core import build_from_checkpoint, load_checkpoint as editor_load
    assert ck.load_networks(ck.load_checkpoint(no_d))[1] is None          # G only: the editor can run
    assert build_from_checkpoint(editor_load(no_d))[1] is None
    with pytest.raises(ConfigError, match="checkpoint has no 'D' entry"):  # the evaluation needs D
        eval_load(no_d)
    wide = _save(tmp_path / "wide.pt", _state(model_config=dict(CFG, g_conv_dim=8)))   # weights do not fit
    for build in (lambda: ck.load_networks(ck.load_checkpoint(wide), path=wide),
                  lambda: build_from_checkpoint(editor_load(wide)), lambda: eval_load(wide)):
        with pytest.raises(ConfigError, match="wide.pt: weights do not match its model_config") as e:
            build()
        assert "\n" not in str(e.value)
