"""The CLI skeleton and configuration presets."""
from __future__ import annotations

import re

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from tests.helpers import ROOT, slidergan
from workflows.cli import COMMANDS


def _contract_commands() -> list[str]:
    """The commands named in the first column of the command table of docs/INTERFACES.md."""
    text = (ROOT / "docs" / "INTERFACES.md").read_text()
    table = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    cells = [ln.split("|")[1] for ln in table.splitlines() if ln.startswith("| `")]
    return [name for cell in cells for name in re.findall(r"`([a-z][a-z0-9-]*)", cell)]


def test_help_lists_every_command_of_the_contract():
    documented = _contract_commands()
    assert {"demo", "make-demo", "fit-emotionet", "render-warps", "project-4dfab", "train", "evaluate",
            "bench", "shards", "edit", "serve"} <= set(documented)
    assert set(documented) == set(COMMANDS)                 # every command documented, nothing else
    out = slidergan("--help").stdout
    for name in documented:
        assert f"  {name} " in out


@pytest.mark.parametrize("args", [["frobnicate"], ["--frobnicate"], ["build-model", "--bogus", "x"]])
def test_usage_errors_are_one_line_exit_2(args):
    proc = slidergan(*args, check=False)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in proc.stderr


def test_paper_preset_has_the_paper_hyperparameters():
    cfg = load_config("paper")
    t = cfg.train
    assert (cfg.model.n_exp, t.image_size, t.batch_size, t.epochs_paired, t.epochs_unpaired) == (30, 128, 16, 20, 40)
    assert (t.beta1, t.beta2) == (0.5, 0.999)
    assert [t.lambda_adv, t.lambda_exp, t.lambda_rec, t.lambda_gen, t.lambda_id, t.lambda_att] == \
        [30.0, 1000.0, 10.0, 10.0, 4.0, 0.3]
    assert (cfg.warps.faces, cfg.warps.per_face) == (10000, 20)


def test_overrides_are_validated():
    cfg = load_config(None, ["train.batch_size=4", "train.lr_g=1", "fit.landmarks=detect"])
    assert cfg.train.batch_size == 4 and cfg.train.lr_g == 1.0 and isinstance(cfg.train.lr_g, float)
    # YAML 1.1 reads "1e-6" as a string; a float key takes it as the number
    assert load_config(None, ["train.lr_g=1e-6", "fit.max_photometric_residual=2E-3"]).train.lr_g == 1e-6
    with pytest.raises(ConfigError, match="expects float"):
        load_config(None, ["train.lr_g=fast"])
    with pytest.raises(ConfigError, match="unknown config key 'train.bogus'"):
        load_config(None, ["train.bogus=1"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(None, ["train.batch_size=big"])
    with pytest.raises(ConfigError, match="expects bool"):
        load_config(None, ["train.amp=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.batch_size"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent.yaml")


def test_bad_preset_file_is_a_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("inherit: demo.yaml\ntrain:\n  batch_size: sixteen\n")
    import shutil
    from pipeline.config import config_dir
    shutil.copy(config_dir() / "demo.yaml", tmp_path / "demo.yaml")
    with pytest.raises(ConfigError, match="batch_size expects int"):
        load_config(bad)
    proc = slidergan("train", "--data", tmp_path, "--out", tmp_path / "t", "--config", bad, check=False)
    assert proc.returncode == 2 and "batch_size expects int" in proc.stderr


def test_build_model_cli_from_fixture_files(tmp_path):
    import scipy.io
    from fitting.model import MorphableModel, orthonormalise

    rng = np.random.default_rng(0)
    N = 30
    scipy.io.savemat(tmp_path / "lsfm.mat", {
        "mean": rng.normal(size=3 * N), "components": orthonormalise(rng.normal(size=(3 * N, 5))),
        "eigenvalues": [5, 4, 3, 2, 1], "trilist": rng.integers(0, N, (10, 3))})
    np.savez(tmp_path / "exp.npz", mean=np.zeros(3 * N), components=orthonormalise(rng.normal(size=(3 * N, 3))),
             eigenvalues=[3, 2, 1])
    (tmp_path / "lm.txt").write_text(" ".join(str(i % N) for i in range(68)))
    slidergan("build-model", "--identity", tmp_path / "lsfm.mat", "--expression", tmp_path / "exp.npz",
              "--landmarks", tmp_path / "lm.txt", "--out", tmp_path / "model.h5")
    m = MorphableModel.load(tmp_path / "model.h5")
    assert (m.n_vertices, m.n_id, m.n_exp) == (N, 5, 3)
    proc = slidergan("build-model", "--identity", tmp_path / "lsfm.mat", "--expression", tmp_path / "exp.npz",
                     "--out", tmp_path / "m2.h5", check=False)
    assert proc.returncode == 2 and "landmark" in proc.stderr and "Traceback" not in proc.stderr
