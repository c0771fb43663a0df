"""One progress style for every stage and task pool (docs/pipeline.md, Progress).

On a terminal: a tqdm bar (``done/total``, items/s, ETA).  Anywhere else (SLURM logs, CI,
``make ... > log``): plain lines, at most one every ``interval`` seconds (30 by default),
plus one at the end::

    fit: 12/40 chunks, 768/2560 items, 41.3 items/s, ETA 43s

A bar that redraws every 0.1 s writes megabytes into a log per hour; one line per 30 s is a
few kilobytes.  ``clock`` is injectable so the throttling is tested with a fake clock.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Callable, Optional

LOG_INTERVAL = 30.0


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_eta(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):       # NaN or inf
        return "?"
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """``Progress(total, desc, unit, total_items=None)``; ``update(n=1, items=0)``; ``close()``.

    ``total``: units of work (chunks, tasks); ``total_items``: the inputs they hold (for
    items/s and the ETA; default: units are the items).  ``enabled=False`` prints nothing.
    ``tty`` overrides the terminal check (None: ``file.isatty()``)."""

    def __init__(self, total: int, desc: str, unit: str = "chunk", total_items: Optional[int] = None,
                 enabled: bool = True, file: Optional[IO[str]] = None, interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, tty: Optional[bool] = None):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.total_items = int(total_items) if total_items is not None else None
        self.file = file if file is not None else sys.stderr
        self.interval, self.clock = float(interval), clock
        self.enabled = bool(enabled)
        self.done = 0
        self.items = 0
        self.t0 = clock()
        self._last = self.t0
        self._closed = False
        self.lines = 0                                          # plain lines written
        self._bar = None
        if self.enabled and (tty if tty is not None else _is_tty(self.file)):
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=desc, file=self.file, dynamic_ncols=True)

    # ------------------------------------------------------------------ public
    def update(self, n: int = 1, items: int = 0) -> None:
        self.done += int(n)
        self.items += int(items) if self.total_items is not None else int(n)
        if not self.enabled:
            return
        if self._bar is not None:
            if self.total_items is not None:
                self._bar.set_postfix_str(f"{self.rate():.1f} items/s", refresh=False)
            self._bar.update(int(n))
            return
        now = self.clock()
        if now - self._last >= self.interval and self.done < self.total:
            self._write(now)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        elif self.total > 0:
            self._write(self.clock())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ text
    def rate(self, now: Optional[float] = None) -> float:
        dt = (self.clock() if now is None else now) - self.t0
        return self.items / dt if dt > 0 else 0.0

    def line(self, now: Optional[float] = None) -> str:
        now = self.clock() if now is None else now
        rate = self.rate(now)
        total_items = self.total_items if self.total_items is not None else self.total
        left = total_items - self.items
        eta = format_eta(left / rate) if rate > 0 else ("0s" if left <= 0 else "?")
        s = f"{self.desc}: {self.done}/{self.total} {self.unit}s"
        if self.total_items is not None:
            s += f", {self.items}/{self.total_items} items"
        per = "items" if self.total_items is not None else f"{self.unit}s"
        return s + f", {rate:.1f} {per}/s, ETA {eta}"

    def _write(self, now: float) -> None:
        self._last = now
        self.lines += 1
        try:
            self.file.write(self.line(now) + "\n")
            self.file.flush()
        except (OSError, ValueError):
            pass
