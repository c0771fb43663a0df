"""The evaluation's metrics as a registry (after stylegan2-ada-pytorch's ``metric_main``).

A metric is a small function of one :class:`MetricContext` (the run folder, the options,
the evaluated network, the material every network shares, and the outputs of the metrics
before it) that returns a dict of metrics.json values; :func:`register_metric` adds it to
:data:`METRICS` in order.  :func:`run_metrics` loops them for one network through one
error guard (:func:`guard`) and appends each metric's result as one line to
``E/metrics.jsonl``; :data:`COMPARISONS` are the functions over all rows at the end
(``ied_vs_copy``, ``*_gap``).  The metrics themselves are in :mod:`evaluation.tables`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from evaluation.data import Unavailable
from evaluation.networks import PseudoNetwork
from pipeline.config import ConfigError

EMPTY = "no usable rows (e.g. all reference vectors ~0)"


@dataclass(frozen=True)
class Metric:
    """``fn(ctx) -> dict`` (or None: does not apply to this network, nothing recorded).
    ``keys``: the keys it fills; a key still null after it ran gets the reason ``empty``
    (a string, or a function of the context).  ``fails``: the keys made null with the reason
    when it cannot run (:class:`~evaluation.data.Unavailable` or an error; default ``keys``).
    ``after``: a metric whose output it reads; skipped when that one did not run (its
    ``fails`` carry the reason).  ``title``: logged before it runs.  ``models_only``: not
    for the baselines."""

    name: str
    fn: Callable
    keys: tuple = ()
    fails: tuple | None = None
    after: str | None = None
    title: str | None = None
    models_only: bool = False
    empty: object = EMPTY


#: name -> Metric, in the order they run
METRICS: dict[str, Metric] = {}
#: name -> fn(results, base_results, write): run over every row once all networks are done
COMPARISONS: dict[str, Callable] = {}


def register_metric(keys=(), fails=None, after=None, title=None, models_only=False, empty=EMPTY, name=None):
    """Decorator: add ``fn`` to :data:`METRICS` (see :class:`Metric`)."""
    def deco(fn):
        m = Metric(name or fn.__name__, fn, tuple(keys), None if fails is None else tuple(fails), after, title,
                   models_only, empty)
        METRICS[m.name] = m
        return fn
    return deco


def register_comparison(fn):
    """Decorator: add ``fn(results, base_results)`` to :data:`COMPARISONS`."""
    COMPARISONS[fn.__name__] = fn
    return fn


def registered() -> list[Metric]:
    """Every metric, in order (importing :mod:`evaluation.tables` registers them)."""
    import evaluation.tables  # noqa: F401

    return list(METRICS.values())


class Result:
    """One network's row: ``metrics`` (every headline key, null until filled), ``reasons``
    (why a key is null), ``notes``, and Table 2's presets (for the figures)."""

    def __init__(self, nets):
        from evaluation.report import METRIC_KEYS

        self.nets = nets
        self.metrics: dict = {k: None for k in METRIC_KEYS}
        self.reasons: dict = {}
        self.notes: dict = {}
        self.presets = self.have = None     # Table 2 presets (for the figures)

    def fail(self, keys, reason: str):
        for k in keys:
            self.metrics.setdefault(k, None)
            if self.metrics.get(k) is None:
                self.reasons.setdefault(k, reason)

    def as_dict(self) -> dict:
        n = self.nets
        out = {"metrics": self.metrics, "notes": self.notes, "variant": n.variant,
               "reasons": {k: v for k, v in self.reasons.items() if self.metrics.get(k) is None},
               "checkpoint": n.path, "step": n.step, "n_params": n.n_params,
               "kind": "baseline" if isinstance(n, PseudoNetwork) else "model"}
        if isinstance(n, PseudoNetwork):
            out.update(checkpoint=None, step=None, note=n.note, regressor=getattr(n, "regressor_name", None))
        return out


def guard(res: Result, keys, fn: Callable[[], dict | None], log, checked=None, empty: str = EMPTY,
          label: str | None = None) -> dict | None:
    """Run one protocol; Unavailable -> ``keys`` null with the reason; other errors -> null
    with the error (an evaluation must report what it could, not die on one protocol).
    Array values of the protocol's result (per-pair numbers, outputs) are returned but not
    stored as metrics; ``per_class`` becomes ``expr_per_class``.  Keys of ``checked``
    (default ``keys``) still null afterwards get the reason ``empty``; ``label`` names the
    protocol in the log (default the first key)."""
    try:
        out = fn()
    except Unavailable as e:
        res.fail(keys, str(e))
        return None
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — recorded in the report, see docstring
        res.fail(keys, f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        log(f"  {res.nets.name}: {label or keys[0]} failed: {type(e).__name__}: {e}")
        return None
    if out is None:
        return None
    for k, v in out.items():
        if k == "per_class" or isinstance(v, np.ndarray):
            continue
        res.metrics[k] = v
    if "per_class" in out:
        res.metrics["expr_per_class"] = {str(k): v for k, v in out["per_class"].items()}
    for k in keys if checked is None else checked:
        if res.metrics.get(k) is None and k not in res.reasons:
            res.reasons[k] = empty
    return out


@dataclass
class MetricContext:
    """What a metric reads: ``net`` (a checkpoint's networks or a baseline), ``res`` (its
    row), ``sh`` (:class:`evaluation.shared.Shared`: data, options, cached material),
    ``outputs`` (name -> the full dict each earlier metric returned, arrays included) and
    ``cache`` (objects a metric hands to the ones after it, e.g. the edits)."""

    net: object
    res: Result
    sh: object
    outputs: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)

    @property
    def data(self):
        return self.sh.data

    @property
    def opt(self):
        return self.sh.opt

    @property
    def model(self):
        return self.sh.data.model

    @property
    def real(self):
        return self.sh.data.real

    @property
    def log(self):
        return self.sh.log

    @property
    def baseline(self) -> bool:
        return isinstance(self.net, PseudoNetwork)


def _jsonable(v):
    from evaluation.report import _jsonable as j

    return j(v)


class MetricsLog:
    """``E/metrics.jsonl``: one JSON line per metric and network (and per comparison),
    in the order they ran; rewritten by every evaluation."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(_jsonable(record), sort_keys=False) + "\n")


def run_metrics(ctx: MetricContext, metrics: list[Metric], jsonl: MetricsLog | None = None) -> Result:
    """Every metric of ``metrics`` for ``ctx.net`` through :func:`guard`, in order."""
    res = ctx.res
    for m in metrics:
        if (m.models_only and ctx.baseline) or (m.after is not None and m.after not in ctx.outputs):
            continue
        if m.title:
            ctx.log(f"  {m.title}")
        fails = m.keys if m.fails is None else m.fails
        empty = m.empty(ctx) if callable(m.empty) else m.empty
        t0 = time.time()
        out = guard(res, fails, lambda: m.fn(ctx), ctx.log, checked=m.keys, empty=empty,
                    label=(list(fails) + [m.name])[0])
        if out is not None:
            ctx.outputs[m.name] = out
        if jsonl is not None:
            stored = [("expr_per_class" if k == "per_class" else k) for k, v in (out or {}).items()
                      if not isinstance(v, np.ndarray)]
            mine = list(dict.fromkeys(list(fails) + list(m.keys)))
            jsonl.write({"network": res.nets.name, "kind": "baseline" if ctx.baseline else "model",
                         "metric": m.name, "ran": out is not None,
                         "results": {k: res.metrics.get(k) for k in stored},
                         "reasons": {k: res.reasons[k] for k in mine
                                     if res.metrics.get(k) is None and k in res.reasons},
                         "seconds": round(time.time() - t0, 3)})
    return res
