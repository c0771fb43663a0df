"""Cluster profiles: the SLURM profile renders a valid job script (no SLURM needed)."""
from __future__ import annotations

import subprocess

import pytest

from pipeline.cluster import load_profile, slurm_cluster
from pipeline.config import ConfigError


def test_slurm_profile_renders_job_script(tmp_path):
    prof = load_profile("slurm")
    assert prof["kind"] == "slurm"
    with slurm_cluster(prof) as cluster:
        script = cluster.job_script()
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    assert f"#SBATCH -p {prof['queue']}" in lines
    assert f"#SBATCH -t {prof['walltime']}" in lines
    assert f"#SBATCH --cpus-per-task={prof['cores']}" in lines
    for extra in prof["job_extra_directives"]:
        assert f"#SBATCH {extra}" in lines
    for pro in prof["job_script_prologue"]:
        assert pro in lines
    worker = [ln for ln in lines if "distributed.cli.dask_worker" in ln]
    assert len(worker) == 1
    assert f"--nworkers {prof['processes']}" in worker[0] and "--nthreads 1" in worker[0]
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0


def test_profile_file_and_errors(tmp_path):
    custom = tmp_path / "site.yaml"
    custom.write_text("kind: slurm\nqueue: gpu\ncores: 2\nprocesses: 2\nmemory: 4GB\nwalltime: '00:10:00'\n"
                      "job_extra_directives: ['--gres=gpu:1']\n")
    with slurm_cluster(load_profile(str(custom))) as cluster:
        script = cluster.job_script()
    assert "#SBATCH -p gpu" in script and "#SBATCH --gres=gpu:1" in script
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: slurm\nqueue: gpu\nqeue: typo\n")
    with pytest.raises(ConfigError, match="unknown slurm cluster key 'qeue'"):
        load_profile(str(bad))
    with pytest.raises(ConfigError, match="no cluster profile"):
        load_profile("pbs")
    with pytest.raises(ConfigError, match="cluster profile not found"):
        load_profile(str(tmp_path / "missing.yaml"))


def test_slurm_without_sbatch_is_a_config_error(tmp_path):
    import shutil

    from pipeline.runner import run_stage
    from pipeline.testing import ToyStage, make_toy_inputs

    if shutil.which("sbatch"):
        pytest.skip("a real SLURM is installed here")
    inputs = make_toy_inputs(tmp_path / "in", 4)
    with pytest.raises(ConfigError, match="'sbatch' not found"):
        run_stage(ToyStage(inputs), tmp_path / "o", chunk_size=1, cluster="slurm", progress=False, log=None)


def test_slurm_jobs_that_never_start_time_out_with_one_line(tmp_path, monkeypatch):
    """A fake sbatch that accepts jobs which never run: the stage ends after
    job_start_timeout with WorkerTimeout, and the jobs are cancelled."""
    import os
    import time

    from pipeline.cluster import WorkerTimeout
    from pipeline.runner import run_stage
    from pipeline.testing import ToyStage, make_toy_inputs

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name, body in (("sbatch", 'echo "Submitted batch job 4242"'), ("scancel", "true"), ("squeue", "true")):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{body}\n')
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    prof = tmp_path / "site.yaml"
    prof.write_text("kind: slurm\nqueue: cpu\ncores: 1\nprocesses: 1\nmemory: 1GB\nwalltime: '00:05:00'\n"
                    f"local_directory: {tmp_path}\n")
    inputs = make_toy_inputs(tmp_path / "in", 4)
    t = time.monotonic()
    with pytest.raises(WorkerTimeout, match=r"no worker started within 3 s \(cluster.job_start_timeout\)") as e:
        run_stage(ToyStage(inputs), tmp_path / "o", chunk_size=1, cluster=str(prof), workers=1,
                  progress=False, log=None, job_start_timeout=3)
    assert time.monotonic() - t < 60 and "\n" not in str(e.value)
    calls = log.read_text()
    assert "sbatch" in calls and "scancel 4242" in calls                    # submitted, then cancelled
