"""Trainer: overfitting one paired batch, kill -9 + resume == uninterrupted run, variants,
logging, checkpoint format, clear errors."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model.networks import build_networks
from pipeline.config import load_config
from tests.train.tiny import TINY_TRAIN, make_tiny_run
from train.checkpoint import latest_checkpoint, load_checkpoint
from train.trainer import Trainer
from workflows.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def _sets(extra=()):
    out = []
    for s in list(TINY_TRAIN) + list(extra):
        out += ["--set", s]
    return out


def test_overfit_one_paired_batch_drives_l_gen_down(tiny_run, tmp_path):
    # paper losses, weights lowered for a 64-step run: with lambda_rec == lambda_gen the
    # identity mapping (mask 0) is reached first and left only slowly
    cfg = load_config(None, TINY_TRAIN + ["train.n_critic=1", "train.lr_g=0.001", "train.lr_decay_fraction=0.0",
                                          "train.lambda_adv=1.0", "train.lambda_exp=1.0", "train.lambda_att=0.01",
                                          "train.lambda_rec=1.0", "train.g_repeat=2",
                                          "train.mask_bias_init=0.0"])
    tr = Trainer(tiny_run, tmp_path / "of", cfg, variant="rad-no-id", steps=1000).setup()
    assert tr.phases[0].name == "paired"
    ds = tr.phases[0].dataset
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    hist = [tr.train_step(batch, True, i)["g_gen"] for i in range(64)]
    assert hist[-1] < 0.5 * hist[0], hist


def _run_cli(args, env=None, step_delay=None, **kw):
    """``slidergan train ARGS`` in a subprocess; ``step_delay`` seconds of sleep after every step
    (tests/train/slow_train.py) so a test can kill it between two checkpoints."""
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    e.update(env or {})
    entry = ["-m", "workflows"] if step_delay is None else ["-m", "tests.train.slow_train", str(step_delay)]
    return subprocess.Popen([sys.executable, *entry, "train", *map(str, args)], cwd=ROOT, env=e,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_and_resume_matches_uninterrupted_run(tiny_run, tmp_path):
    # 2 paired epochs x 6 batches + 5 unpaired x 2, capped at 20: 10 paired then 10 unpaired steps
    from model.identity import IResNet
    from train.checkpoint import save_identity_file
    f_conf = {"layers": [1, 1, 1, 1], "width": 8, "input_size": 32, "num_features": 16}
    save_identity_file(tmp_path / "F.pt", f_conf, IResNet(**f_conf).state_dict())
    args = ["--data", tiny_run, "--variant", "rad", "--steps", "20",
            *_sets(["train.epochs_paired=2", "train.epochs_unpaired=5", "train.tensorboard=false",
                    f"train.identity_weights={tmp_path / 'F.pt'}"])]
    # reference: uninterrupted, under torchrun-style env with world_size 1 (gloo backend)
    ddp_env = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(_free_port())}
    ref = _run_cli([*args, "--out", tmp_path / "ref"], env=ddp_env)
    # interrupted: slowed down per step, killed with SIGKILL after its step-10 checkpoint
    out = tmp_path / "killed"
    victim = _run_cli([*args, "--out", out], step_delay=0.25)
    ck10 = out / "checkpoints" / "step-0000010.pt"
    deadline = time.time() + 120
    while not ck10.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(latest_checkpoint(out))["step"]
    assert 10 <= killed_at < 20
    (out / "checkpoints" / ".step-0000015.pt.tmp-host-1-dead").write_bytes(b"half a checkpoint")
    resumed = _run_cli([*args, "--out", out])
    text = resumed.communicate(timeout=180)[0]
    assert resumed.returncode == 0, text
    assert f"(step {killed_at})" in text
    ref_text = ref.communicate(timeout=180)[0]
    assert ref.returncode == 0, ref_text
    a = load_checkpoint(out / "checkpoints" / "latest.pt")
    b = load_checkpoint(tmp_path / "ref" / "checkpoints" / "latest.pt")
    assert a["step"] == b["step"] == 20
    assert ("G_ema" in a) == ("G_ema" in b)
    for net in ("G", "D", "G_ema") if "G_ema" in a else ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    assert torch.equal(a["rng"]["target"], b["rng"]["target"])
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]    # stale temps removed
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]                    # no duplicate lines from the resumed part


def test_checkpoint_format_logging_and_variants(tiny_run, tmp_path, capsys):
    out = tmp_path / "gan"
    assert cli(["train", "--data", str(tiny_run), "--variant", "ganimation", "--out", str(out), "--steps", "6",
                *_sets(["train.epochs_unpaired=3", "train.image_every=3"])]) == 0
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    for k in ("format", "variant", "step", "phase", "model_config", "G", "D", "opt_G", "opt_D", "scaler", "rng"):
        assert k in ck
    assert ck["variant"] == "ganimation" and ck["phase"] == "unpaired" and ck["step"] == 6
    G, D = build_networks(ck["model_config"])
    G.load_state_dict(ck["G"])
    D.load_state_dict(ck["D"])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 6 and recs[-1]["phase"] == "unpaired"
    for k in ("loss_d", "d_adv", "d_gp", "d_exp", "loss_g", "g_adv", "g_rec", "g_att", "mask_mean",
              "mask_sat_hi", "mask_sat_lo", "grad_norm_g", "grad_norm_d"):
        assert k in recs[-1], k
    assert all(r.get("g_gen", 0) == 0 and r.get("g_id", 0) == 0 for r in recs)   # GANimation: no L_gen, no L_id
    assert not (out / "identity.pt").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tb"))
    acc.Reload()
    assert {"stats/mask_mean", "stats/mask_sat_hi", "stats/mask_sat_lo", "loss/g_rec", "loss/d_gp"} <= set(acc.Tags()["scalars"])
    assert "grid/input|mask|colour|output|target" in acc.Tags()["images"]
    img = acc.Images("grid/input|mask|colour|output|target")[0]
    assert (img.width, img.height) == (5 * 32, 4 * 32)          # 5 columns, 4 samples
    # a finished run is idempotent: re-running resumes at its end and trains nothing more
    assert cli(["train", "--data", str(tiny_run), "--variant", "ganimation", "--out", str(out), "--steps", "6",
                *_sets(["train.epochs_unpaired=3", "train.image_every=3"])]) == 0
    assert torch.equal(torch.load(out / "checkpoints" / "latest.pt", weights_only=True)["G"]["mask.0.weight"],
                       ck["G"]["mask.0.weight"])
    # a different variant in the same folder is refused
    capsys.readouterr()
    assert cli(["train", "--data", str(tiny_run), "--variant", "rad", "--out", str(out), "--steps", "6", *_sets()]) == 2
    assert "holds a 'ganimation' run" in capsys.readouterr().err


def test_no_warps_skips_paired_phase_and_speech_pads(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "run", faces=4, warps=False, fab=False)
    out = tmp_path / "t"
    assert cli(["train", "--data", str(run), "--variant", "rad-no-id", "--out", str(out), "--steps", "2",
                *_sets(["train.speech=true", "train.speech_data=null", "train.batch_size=2",
                        "train.epochs_unpaired=1"])]) == 0
    text = capsys.readouterr().out
    assert "skipping the paired phase" in text and "unpaired: 1 epochs x 2 batches" in text
    ck = torch.load(out / "checkpoints" / "latest.pt", weights_only=True)
    assert ck["model_config"]["c_dim"] == 40 and ck["phase"] == "unpaired"


def test_clear_errors(tmp_path, capsys):
    run = make_tiny_run(tmp_path / "run", faces=4, E=32, warps=False, fab=False)
    assert cli(["train", "--data", str(run), "--out", str(tmp_path / "t"), *_sets()]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "parameter width 32 disagrees with the conditioning width 30" in err
    assert cli(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "t2")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli(["train", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "t3")]) == 2
    assert "no shard stage" in capsys.readouterr().err
    run = make_tiny_run(tmp_path / "run30", faces=4, warps=False, fab=False)
    assert cli(["train", "--data", str(run), "--out", str(tmp_path / "t4"), *_sets(["train.batch_size=0"])]) == 2
    assert "train.batch_size must be >= 1, got 0" in capsys.readouterr().err
    assert cli(["train", "--data", str(run), "--out", str(tmp_path / "t5"), *_sets(["train.image_size=36"])]) == 2
    assert "not divisible by 2^d_repeat" in capsys.readouterr().err
    # a finished stage with no rows (every input rejected)
    from pipeline.runner import run_stage
    from pipeline.testing import ToyStage
    (tmp_path / "noimages").mkdir()
    run_stage(ToyStage(tmp_path / "noimages"), tmp_path / "emptyrun" / "fits", cluster="inprocess", progress=False, log=None)
    assert cli(["train", "--data", str(tmp_path / "emptyrun"), "--out", str(tmp_path / "t6"), *_sets()]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard set is empty (0 rows)" in err


def test_sigterm_saves_a_checkpoint_and_stops(tiny_run, tmp_path, monkeypatch):
    cfg = load_config(None, TINY_TRAIN + ["train.tensorboard=false", "train.checkpoint_every=100",
                                          "train.epochs_paired=2"])
    original = Trainer.train_step

    def step_then_term(self, batch, paired, step):
        m = original(self, batch, paired, step)
        if step == 3:                                  # SLURM pre-emption in the middle of a run
            os.kill(os.getpid(), signal.SIGTERM)
        return m

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(Trainer, "train_step", step_then_term)
    out = tmp_path / "t"
    summary = Trainer(tiny_run, out, cfg, variant="rad-no-id", steps=8).run()
    assert summary["stopped"] == "SIGTERM" and summary["step"] == 4
    assert signal.getsignal(signal.SIGTERM) is before
    assert load_checkpoint(latest_checkpoint(out))["step"] == 4
    monkeypatch.setattr(Trainer, "train_step", original)
    summary = Trainer(tiny_run, out, cfg, variant="rad-no-id", steps=8).run()
    assert summary["step"] == 8 and "stopped" not in summary


def test_training_seed_changes_init_but_not_the_held_out_split(tiny_run, tmp_path):
    """train.seed varies G's initialisation and the data order; the evaluation's held-out split
    and the validation pairs follow the global seed, so runs of several seeds share them."""
    runs = {}
    for seed in (None, 3):
        sets = TINY_TRAIN + ([f"train.seed={seed}"] if seed is not None else [])
        tr = Trainer(tiny_run, tmp_path / f"s{seed}", load_config(None, sets), variant="rad-no-id", steps=1).setup()
        runs[seed] = tr
    a, b = runs[None], runs[3]
    assert a.seed == a.split_seed == b.split_seed != b.seed == 3
    assert np.array_equal(a.val_set.rows, b.val_set.rows)
    rows = a.val_set.rows                                              # and the same sources
    assert [a.val_set.ds.source_of(i) for i in rows] == [b.val_set.ds.source_of(i) for i in rows]
    trained = b.phases[0].dataset                                      # while training draws its own
    assert any(trained.source_of(i) != b.val_set.ds.source_of(i) for i in range(len(trained)))
    wa, wb = next(iter(a.G.parameters())), next(iter(b.G.parameters()))
    assert not torch.equal(wa, wb)


def test_paired_mix_batches_are_a_function_of_the_step(tiny_run, tmp_path):
    # the photo phase with train.paired_mix=2: own, own, warps, own, own, warps, ...; the warp
    # stream continues phase 1's epochs, and starting the phase at any step gives the same batches
    cfg = load_config(None, TINY_TRAIN + ["train.epochs_paired=1", "train.epochs_unpaired=3", "train.paired_mix=2",
                                          "train.identity_weights=null"])
    tr = Trainer(tiny_run, tmp_path / "mix", cfg, variant="rad")
    tr.build_data()
    ph = [p.name for p in tr.phases].index("unpaired")
    phase = tr.phases[ph]
    assert phase.mix == 2 and phase.steps == 3 * phase.batches_per_epoch * 3 // 2

    def seq(start, n):
        out, it = [], tr._phase_batches(ph, start)
        for _ in range(n):
            batch, paired = next(it)
            assert paired == ("target" in batch)
            out.append((paired, tuple(batch["index"].tolist())))
        it.close()
        return out

    full = seq(0, phase.steps)
    assert [k for k, _ in full] == [s % 3 == 2 for s in range(phase.steps)]
    assert seq(5, phase.steps - 5) == full[5:]
    assert seq(4, 3) == full[4:7]
    own = [ix for k, ix in full if not k]
    assert len({i for ix in own[:phase.batches_per_epoch] for i in ix}) == 4 * phase.batches_per_epoch   # no repeats
    first_p1 = tuple(next(tr._phase_batches(0, 0))[0]["index"].tolist())
    mixed = [ix for k, ix in full if k]
    assert mixed[0] != first_p1                              # not phase 1's epoch 0 again


def test_generator_weight_average_follows_its_recurrence_and_is_what_inference_loads(tiny_run, tmp_path):
    # train.g_ema_halflife: after every G update G_ema = beta_n * G_ema + (1 - beta_n) * G, checked
    # against the recurrence run by hand in float64 on the weights G had after each update
    from model.networks import load_from_checkpoint_state
    from train.schedule import ema_beta
    cfg = load_config(None, TINY_TRAIN + ["train.n_critic=2", "train.g_ema_halflife=3", "train.identity_weights=null",
                                          "train.lambda_id=0.0"])
    tr = Trainer(tiny_run, tmp_path / "ema", cfg, variant="rad-no-id", steps=1000).setup()
    ds = tr.phases[0].dataset
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    ref = {k: v.double().clone() for k, v in tr.G.state_dict().items()}
    n = 0
    for step in range(8):
        tr.train_step(batch, True, step)
        if (step + 1) % 2 == 0:                       # a G update
            n += 1
            b = min(0.5 ** (1 / 3), (1 + n) / (10 + n))
            assert ema_beta(3, n) == b
            ref = {k: b * ref[k] + (1 - b) * v.double() for k, v in tr.G.state_dict().items()}
    assert tr.g_updates == n == 4
    ema = tr.G_ema.state_dict()
    for k in ref:
        assert torch.allclose(ema[k].double(), ref[k], atol=1e-6), k
    assert any(not torch.allclose(ema[k], tr.G.state_dict()[k]) for k in ema)    # it is not G itself
    state = tr.state(8)
    G, _, meta = load_from_checkpoint_state(state)
    assert meta["generator_weights"] == "G_ema"
    for k, v in G.state_dict().items():
        assert torch.equal(v, ema[k])
    # resume restores the average and the update count
    tr2 = Trainer(tiny_run, tmp_path / "ema2", cfg, variant="rad-no-id", steps=1000).setup()
    tr2.restore(state)
    assert tr2.g_updates == 4
    for k, v in tr2.G_ema.state_dict().items():
        assert torch.equal(v, ema[k])
    assert ema_beta(0, 5) == 0.0


def test_identity_pairs_are_a_function_of_the_step_and_become_the_targets(tiny_run, tmp_path, monkeypatch):
    # train.paired_identity_fraction: the chosen items of a paired batch get their own source as
    # target (image and parameters), in L_gen and in D's target regression
    from model import losses
    cfg = load_config(None, TINY_TRAIN + ["train.paired_identity_fraction=0.25", "train.identity_weights=null",
                                          "train.n_critic=1"])
    tr = Trainer(tiny_run, tmp_path / "idp", cfg, variant="rad-no-id", steps=1000).setup()
    tr2 = Trainer(tiny_run, tmp_path / "idp2", cfg, variant="rad-no-id", steps=1000).setup()
    masks = [tr.identity_pairs(s, 8) for s in range(400)]
    assert all(torch.equal(m, tr2.identity_pairs(s, 8)) for s, m in enumerate(masks))
    rate = float(torch.stack(masks).float().mean())
    assert 0.21 < rate < 0.29, rate
    assert len({tuple(m.tolist()) for m in masks}) > 50            # not one pattern repeated
    ds = tr.phases[0].dataset
    batch = torch.utils.data.default_collate([ds[i] for i in range(8)])
    step = next(s for s, m in enumerate(masks) if 0 < int(m.sum()) < 8)
    keep = masks[step]
    seen = []
    real_l1 = losses.l1_loss
    monkeypatch.setattr(losses, "l1_loss", lambda a, b: seen.append(b.detach().clone()) or real_l1(a, b))
    tr.train_step(batch, True, step)
    x, y = tr.images(batch["image"]), tr.images(batch["target"])
    target = seen[-1]                                                 # g_gen is the last L1 of the step
    assert torch.equal(target[keep], x[keep]) and torch.equal(target[~keep], y[~keep])
    off = load_config(None, TINY_TRAIN + ["train.identity_weights=null"])
    assert Trainer(tiny_run, tmp_path / "off", off, variant="rad-no-id").identity_pairs(3, 8) is None


def test_paired_4dfab_adds_training_split_renders_only(tiny_run, tmp_path):
    """train.paired_4dfab=N: the paired set is the warps followed by N copies of the 4DFAB renders
    of split 0, each paired within its group with exact parameters; split 1 (evaluation's
    identities) never appears; absent stage -> one-line error."""
    from pipeline.config import ConfigError
    from pipeline.shards import ShardSet

    fab = ShardSet(tiny_run / "4dfab-params")
    split, group, p_fab = fab.read("split"), fab.read("group"), fab.read("p_exp")
    base = Trainer(tiny_run, tmp_path / "f0", load_config(None, TINY_TRAIN + ["train.identity_weights=null"]),
                   variant="rad")
    base.build_data()
    cfg = load_config(None, TINY_TRAIN + ["train.identity_weights=null", "train.paired_4dfab=2"])
    tr = Trainer(tiny_run, tmp_path / "f2", cfg, variant="rad")
    tr.build_data()
    n_w, n_train = len(base.paired_set), int((split == 0).sum())
    assert 0 < n_train < len(split) and len(tr.paired_set) == n_w + 2 * n_train
    seen = []
    for j in range(n_w, len(tr.paired_set)):
        item = tr.paired_set[j]
        r = int(tr.paired_set.parts[1].rows[j - n_w])
        assert split[r] == 0
        assert np.array_equal(item["p_trg"].numpy(), p_fab[r])
        assert torch.equal(item["target"], torch.from_numpy(fab.read("image", r)).permute(2, 0, 1))
        src = [k for k in range(len(fab)) if np.array_equal(p_fab[k], item["p"].numpy())]
        assert len(src) == 1 and src[0] != r and group[src[0]] == group[r]     # another frame of its session
        seen.append(r)
    assert sorted(seen) == sorted(np.nonzero(split == 0)[0].tolist() * 2)
    for j in range(n_w):                                                       # the warps come first, unchanged
        assert tr.paired_set[j]["index"] == base.paired_set[j]["index"]
    bare = make_tiny_run(tmp_path / "nofab", fab=False)
    said = []
    t3 = Trainer(bare, tmp_path / "f3", cfg, variant="rad", echo=said.append)
    t3.build_data()                                   # no project-4dfab stage: the warps alone, with a note
    assert len(t3.paired_set) == n_w and any("paired_4dfab=2 adds nothing" in m for m in said)
    from pipeline.testing import make_stage
    odd = make_tiny_run(tmp_path / "oddfab", fab=False)
    make_stage(odd / "4dfab-params", "4dfab-params", {"key": ["a", "b"], "image": fab.read("image")[:2],
                                                      "p_exp": p_fab[:2]}, chunk_size=2)
    with pytest.raises(ConfigError, match="group/split"):
        Trainer(odd, tmp_path / "f4", cfg, variant="rad").build_data()


@pytest.mark.parametrize("lambda_rec", [0.0, 1.0])
def test_cycle_pass_runs_only_when_l_rec_is_weighed(tiny_run, tmp_path, lambda_rec):
    # lambda_rec 0: G runs once per G update (no cycle pass, no cycle-mask L_att), and the
    # update's gradient is that of L_gen + L_att(mask) computed by hand on the same batch
    from model import losses
    cfg = load_config(None, TINY_TRAIN + ["train.n_critic=1", "train.identity_weights=null", "train.lambda_id=0.0",
                                          f"train.lambda_rec={lambda_rec}", "train.g_ramp_start=1000",
                                          "train.amp=false", "train.g_ema_halflife=0"])
    tr = Trainer(tiny_run, tmp_path / "rec", cfg, variant="rad-no-id", steps=1000).setup()
    ds = tr.phases[0].dataset
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    calls, grads = [], {}
    tr.G.register_forward_hook(lambda *a: calls.append(1))
    tr.opt_G.step = lambda: grads.update({n: q.grad.clone() for n, q in tr.G.named_parameters()})
    ref = {k: v.clone() for k, v in tr.G.state_dict().items()}
    m = tr.train_step(batch, True, 0)
    assert len(calls) == (1 if lambda_rec == 0 else 2)
    if lambda_rec > 0:
        assert m["g_rec"] > 0
        return
    assert m["g_rec"] == 0.0
    G = build_networks(tr.model_config)[0]
    G.load_state_dict(ref)
    x = tr.images(batch["image"])
    fake, _, mask = G(x, batch["p_trg"], batch["p"])
    loss = (tr.lam["gen"] * losses.gen_loss(fake, tr.images(batch["target"]), tr.t["gen_loss"])
            + tr.lam["att"] * losses.attention_loss(mask, float(tr.t["att_tv"])))
    loss.backward()
    for n, q in G.named_parameters():
        assert torch.allclose(grads[n], q.grad, rtol=1e-4, atol=1e-7), n
