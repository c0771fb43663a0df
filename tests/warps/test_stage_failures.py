"""Failures fail loudly in the real stages (fit-emotionet, render-warps, project-4dfab),
through the CLI in this process (``--cluster inprocess``, so an injected bug can be patched
in): a bug in a chunk exits 1 naming the chunk and the error, a bad input is still a reject,
a corrupt model.h5 is a one-line error with exit 2 -- also for evaluation's run folder."""
import json
import shutil
from pathlib import Path

import h5py
import pytest

from pipeline.shards import ShardError, ShardSet


def _cli(capsys, *args):
    from workflows.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def _warps_args(tiny_world, tiny_fits, out):
    return ["render-warps", "--fits", tiny_fits, "--model", tiny_world / "model.h5", "--out", out,
            "--cluster", "inprocess", "--no-progress", "--chunk-size", "2",
            "--set", "warps.faces=4", "--set", "warps.per_face=1"]


def _4dfab_args(tiny_world, out, model=None):
    return ["project-4dfab", "--meshes", tiny_world / "4dfab", "--model", model or tiny_world / "model.h5",
            "--out", out, "--cluster", "inprocess", "--no-progress"]


def _fit_args(tiny_world, out, model=None):
    return ["fit-emotionet", "--images", tiny_world / "emotionet", "--model", model or tiny_world / "model.h5",
            "--out", out, "--cluster", "inprocess", "--no-progress", "--chunk-size", "64",
            "--set", "fit.landmarks=sidecar"]


def _corrupt_model(src: Path, dst: Path) -> Path:
    """A copy of ``src`` whose 'mean' dataset has flipped bytes: still an HDF5 file with its
    stored hash attribute (so reading the hash is fine), but its content no longer matches it."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r") as f:
        off = f["mean"].id.get_offset()
    assert off is not None
    with open(dst, "r+b") as fh:
        fh.seek(off + 16)
        b = bytearray(fh.read(64))
        fh.seek(off + 16)
        fh.write(bytes(x ^ 0x5A for x in b))
    return dst


# ----------------------------------------------------------------------------- injected bugs
def test_injected_bug_in_render_warps_exits_1(tiny_world, tiny_fits, tmp_path, capsys, monkeypatch):
    from fitting.warp import Warper

    def broken(self, *a, **k):
        raise TypeError("render() got an unexpected keyword argument 'scale'")

    monkeypatch.setattr(Warper, "render", broken)
    out = tmp_path / "w"
    rc, err = _cli(capsys, *_warps_args(tiny_world, tiny_fits, out))
    assert rc == 1
    assert "error: stage warps: chunks failed: 0 (TypeError: render() got an unexpected keyword" in err
    assert "1 (TypeError" in err
    assert (out / "rejects.jsonl").read_text() == ""             # not a reject
    with pytest.raises(ShardError):
        ShardSet(out)
    monkeypatch.undo()                                            # fixed: the re-run completes
    rc, err = _cli(capsys, *_warps_args(tiny_world, tiny_fits, out))
    assert rc == 0, err
    assert len(ShardSet(out)) == 4


def test_injected_bug_in_project_4dfab_exits_1(tiny_world, tmp_path, capsys, monkeypatch):
    import workflows.stages.project_4dfab as p4

    def broken(*a, **k):
        raise KeyError("yaw")

    monkeypatch.setattr(p4, "group_camera", broken)
    rc, err = _cli(capsys, *_4dfab_args(tiny_world, tmp_path / "p"))
    assert rc == 1 and "error: stage 4dfab: chunks failed: 0 (KeyError: 'yaw')" in err


def test_injected_bug_in_fit_emotionet_exits_1(tiny_world, tmp_path, capsys, monkeypatch):
    import fitting.align

    def broken(*a, **k):
        raise AttributeError("'NoneType' object has no attribute 'shape'")

    monkeypatch.setattr(fitting.align, "warp_crop", broken)
    out = tmp_path / "f"
    rc, err = _cli(capsys, *_fit_args(tiny_world, out))
    assert rc == 1 and "error: stage fit: chunks failed: 0 (AttributeError: 'NoneType'" in err
    assert (out / "rejects.jsonl").read_text() == ""


# ----------------------------------------------------------------------------- bad inputs
def test_bad_mesh_is_a_reject_with_its_reason(tiny_world, tmp_path, capsys):
    meshes = tmp_path / "m"
    shutil.copytree(tiny_world / "4dfab", meshes)
    objs = sorted(meshes.rglob("*.obj"))
    objs[0].write_text("v 0 0 0\nthis is not a mesh\n")                     # unreadable
    lines = objs[1].read_text().splitlines()
    objs[1].write_text("\n".join(ln for i, ln in enumerate(lines) if not (ln.startswith("v ") and i % 2)) + "\n")
    rc, err = _cli(capsys, "project-4dfab", "--meshes", meshes, "--model", tiny_world / "model.h5",
                   "--out", tmp_path / "p", "--cluster", "inprocess", "--no-progress")
    assert rc == 0, err
    rej = [json.loads(x) for x in (tmp_path / "p" / "rejects.jsonl").read_text().splitlines()]
    assert len(rej) == 2 and {r["reason"] for r in rej} <= {"unreadable mesh", "vertex count mismatch"}
    assert "2 of " in err and "inputs rejected" in err                     # the reject summary
    assert len(ShardSet(tmp_path / "p")) == len(objs) - 2


# ----------------------------------------------------------------------------- corrupt model
def test_corrupt_model_is_one_line_exit_2_in_every_stage(tiny_world, tiny_fits, tmp_path, capsys):
    from fitting.model import ModelError, MorphableModel

    bad = _corrupt_model(tiny_world / "model.h5", tmp_path / "model.h5")
    with pytest.raises(ModelError):
        MorphableModel.load(bad)
    rc, err = _cli(capsys, *_4dfab_args(tiny_world, tmp_path / "p", model=bad))
    assert rc == 2 and err.count("\n") == 1 and "content hash mismatch" in err, err
    warps = _warps_args(tiny_world, tiny_fits, tmp_path / "w")
    warps[warps.index("--model") + 1] = bad
    rc, err = _cli(capsys, *warps)
    assert rc == 2 and err.count("\n") == 1 and "content hash mismatch" in err, err
    rc, err = _cli(capsys, *_fit_args(tiny_world, tmp_path / "f", model=bad))
    assert rc == 2 and "content hash mismatch" in err.splitlines()[-1], err
    assert err.splitlines()[-1].startswith("slidergan fit-emotionet: error: ")


def test_corrupt_run_model_stops_evaluation_absent_one_does_not(tiny_world, tmp_path):
    from evaluation.data import load_data
    from pipeline.config import ConfigError

    run = tmp_path / "run"
    run.mkdir()
    data = load_data(run)                                          # absent: only disables its metrics
    assert data.model is None and "no 3DMM" in data.missing["model"]
    _corrupt_model(tiny_world / "model.h5", run / "model.h5")
    with pytest.raises(ConfigError, match="content hash mismatch"):
        load_data(run)
    (run / "model.h5").write_bytes(b"\x89HDF\r\n garbage")
    with pytest.raises(ConfigError, match="not an HDF5 model file"):
        load_data(run)


def test_cli_maps_a_model_error_to_exit_2(monkeypatch, capsys):
    import types

    from fitting.model import ModelError
    import workflows.cli as cli

    mod = types.SimpleNamespace(add_arguments=lambda p: None,
                                run=lambda a: (_ for _ in ()).throw(ModelError("m.h5: missing dataset(s) mean")))
    monkeypatch.setitem(cli.COMMANDS, "boom", ("boom", "test"))
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: mod)
    assert cli.main(["boom"]) == 2
    assert capsys.readouterr().err == "slidergan boom: error: m.h5: missing dataset(s) mean\n"
