"""``slidergan evaluate`` through the real CLI: success, and one-line errors (exit 2)."""
import json

from tests.helpers import slidergan


def cli(*args):
    """``slidergan evaluate ARGS`` (one OpenMP thread); the exit status is the caller's to check."""
    return slidergan("evaluate", *args, check=False, timeout=300, env={"OMP_NUM_THREADS": "1"})


def test_cli_writes_report(eval_run, checkpoints, tmp_path):
    out = tmp_path / "E"
    p = cli("--checkpoint", checkpoints["rad"], "--compare", checkpoints["ganimation"], "--data", eval_run,
            "--out", out, "--no-figures", "--set", "evaluate.identity=pixels", "--set", "evaluate.pairs=4",
            "--set", "evaluate.test_images=3", "--set", "evaluate.refit=false", "--set", "evaluate.lrw_pairs=2")
    assert p.returncode == 0, p.stderr
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["models"]) == ["ganimation", "rad"]          # sorted keys
    assert list(data["baselines"]) == ["copy-input", "oracle-3d"]
    assert data["rad"] == data["models"]["rad"]                    # the old top-level layout, kept
    for entry in list(data["models"].values()) + list(data["baselines"].values()):
        assert entry["ied"] is not None, entry["reasons"]
        assert entry["exp_rel_error_refit"] is None
        assert "disabled" in entry["reasons"]["exp_rel_error_refit"]
    assert "2 checkpoints + baselines copy-input, oracle-3d" in p.stdout
    assert (out / "index.html").is_file()


def test_cli_errors_are_one_line(eval_run, checkpoints, tmp_path, capsys):
    """Bad input -> exit 2 with one line on stderr (in-process through workflows.cli.main,
    the console script's entry point, to spare five interpreter start-ups)."""
    from workflows.cli import main

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    cases = [
        ("--checkpoint", tmp_path / "missing.pt", "--data", eval_run, "--out", tmp_path / "o"),
        ("--checkpoint", bad, "--data", eval_run, "--out", tmp_path / "o"),
        ("--checkpoint", checkpoints["rad"], "--data", tmp_path / "nowhere", "--out", tmp_path / "o"),
        ("--checkpoint", checkpoints["rad"], "--data", eval_run, "--out", tmp_path / "o",
         "--set", "evaluate.grid_step=0"),
        ("--checkpoint", checkpoints["rad"], "--data", tmp_path, "--out", tmp_path / "o"),
    ]
    for args in cases:
        capsys.readouterr()
        rc = main(["evaluate", *map(str, args)])
        err = capsys.readouterr().err
        assert rc == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_unknown_device_is_a_usage_error(eval_run, checkpoints, tmp_path, capsys):
    from workflows.cli import main

    rc = main(["evaluate", "--checkpoint", str(checkpoints["rad"]), "--data", str(eval_run), "--out",
               str(tmp_path / "o"), "--device", "tpu"])
    assert rc == 2 and "unknown device" in capsys.readouterr().err
