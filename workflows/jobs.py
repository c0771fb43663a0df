"""Running ``slidergan`` commands as child processes: one step at a time, or several side by side.

Used by ``slidergan demo`` (stages in order, then the training runs in parallel) and by
``slidergan compare`` (variants x seeds).  Each child is ``python -m workflows ARGV``, so it
is exactly the command a user would type, with its own exit status and log.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def run_step(name: str, argv: list[str]) -> None:
    """Run one command in the foreground; raise ``RuntimeError`` naming it when it fails."""
    t0 = time.perf_counter()
    print(f"\n==> {name}: slidergan {' '.join(argv)}", flush=True)
    rc = subprocess.run([sys.executable, "-m", "workflows", *argv]).returncode
    if rc != 0:
        raise RuntimeError(f"step '{name}' failed (exit {rc}); re-run 'slidergan {argv[0]}' to see why")
    print(f"==> {name}: done in {time.perf_counter() - t0:.1f}s", flush=True)


def run_parallel(jobs: dict[str, tuple[list[str], Path]], max_jobs: int = 0, every: float = 30.0) -> None:
    """Run commands side by side, at most ``max_jobs`` at once (0 = all), each logging to its
    file, and print every running job's latest line every ``every`` seconds.

    ``jobs``: name -> (argv, log file).  On 2 cores two training runs with one torch thread
    each make twice the G updates per second of wall time that one run with two threads
    makes.  Raises ``RuntimeError`` listing every failed job (the others still finish)."""
    t0 = time.perf_counter()
    waiting = list(jobs.items())
    running: dict[str, tuple[subprocess.Popen, object, Path]] = {}
    done: dict[str, tuple[int, Path]] = {}
    limit = max_jobs if max_jobs > 0 else len(jobs)
    last = time.perf_counter()
    while waiting or running:
        while waiting and len(running) < limit:
            name, (argv, logf) = waiting.pop(0)
            logf.parent.mkdir(parents=True, exist_ok=True)
            print(f"\n==> {name}: slidergan {' '.join(argv)}  (log: {logf})", flush=True)
            fh = open(logf, "w", encoding="utf-8")
            running[name] = (subprocess.Popen([sys.executable, "-m", "workflows", *argv], stdout=fh,
                                              stderr=subprocess.STDOUT), fh, logf)
        time.sleep(1.0)
        for name, (p, fh, logf) in list(running.items()):
            if p.poll() is not None:
                fh.close()
                done[name] = (p.returncode, logf)
                del running[name]
                print(f"==> {name}: " + (last_line(logf) if p.returncode == 0 else f"failed (exit {p.returncode})"),
                      flush=True)
        if running and time.perf_counter() - last >= every:
            last = time.perf_counter()
            print(f"  [{time.perf_counter() - t0:.0f}s] " + " | ".join(
                f"{n}: {last_line(f)}" for n, (_, _, f) in running.items()), flush=True)
    failed = [f"{n} (exit {rc}, log {f})" for n, (rc, f) in done.items() if rc != 0]
    if failed:
        raise RuntimeError("failed: " + "; ".join(failed))
    print(f"==> {len(done)} jobs done in {time.perf_counter() - t0:.1f}s", flush=True)


def last_line(path: Path) -> str:
    """The last non-empty line of a log (carriage-return redraws split into lines), <= 120 chars."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    except OSError:
        return "(no output yet)"
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:120] if lines else "(no output yet)"
