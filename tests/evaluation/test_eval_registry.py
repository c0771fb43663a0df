"""The metric registry (evaluation.registry): one guard, dependencies, E/metrics.jsonl."""
import json
from types import SimpleNamespace

from evaluation.data import Unavailable
from evaluation.registry import Metric, MetricContext, MetricsLog, Result, registered, run_metrics


def _ctx(logs):
    net = SimpleNamespace(name="m", variant="rad", path=None, step=0, n_params=30)
    return MetricContext(net, Result(net), SimpleNamespace(log=logs.append))


def test_run_metrics_guards_each_metric_and_writes_one_line_each(tmp_path):
    def ok(ctx):
        return {"ied": 0.5, "n": 3}

    def later(ctx):                        # reads ok's output
        return {"identity_cos": ctx.outputs["ok"]["ied"] * 2}

    def missing(ctx):
        raise Unavailable("no 4DFAB renders")

    def never(ctx):                        # after a metric that could not run: skipped
        raise AssertionError("must not run")

    def broken(ctx):
        raise RuntimeError("boom\nsecond line")

    def empty(ctx):
        return {"lrw_ied": None}

    def not_applicable(ctx):
        return None

    metrics = [Metric("ok", ok, ("ied",)), Metric("later", later, ("identity_cos",), after="ok"),
               Metric("missing", missing, ("d_rel_error_trg",), fails=("d_rel_error_trg", "d_rel_error_fit")),
               Metric("never", never, ("exp_rel_error_refit",), after="missing"),
               Metric("broken", broken, ("expr_recognition_acc",)),
               Metric("empty", empty, ("lrw_ied",), empty="nothing to compare"),
               Metric("na", not_applicable, ("identity_cos_dlib",))]
    logs = []
    ctx = _ctx(logs)
    jsonl = MetricsLog(tmp_path / "metrics.jsonl")
    res = run_metrics(ctx, metrics, jsonl)
    m, why = res.metrics, res.reasons
    assert m["ied"] == 0.5 and m["n"] == 3 and m["identity_cos"] == 1.0
    assert m["d_rel_error_trg"] is None and why["d_rel_error_trg"] == why["d_rel_error_fit"] == "no 4DFAB renders"
    assert "exp_rel_error_refit" not in why                   # skipped, not failed
    assert why["expr_recognition_acc"] == "error: RuntimeError: boom"
    assert any("expr_recognition_acc failed: RuntimeError" in line for line in logs)
    assert m["lrw_ied"] is None and why["lrw_ied"] == "nothing to compare"
    assert "identity_cos_dlib" not in m and "identity_cos_dlib" not in why
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["metric"] for x in lines] == ["ok", "later", "missing", "broken", "empty", "na"]
    by = {x["metric"]: x for x in lines}
    assert by["ok"]["ran"] and by["ok"]["results"] == {"ied": 0.5, "n": 3} and by["ok"]["network"] == "m"
    assert not by["missing"]["ran"] and by["missing"]["reasons"] == {"d_rel_error_trg": "no 4DFAB renders",
                                                                     "d_rel_error_fit": "no 4DFAB renders"}
    assert by["empty"]["reasons"] == {"lrw_ied": "nothing to compare"}
    assert not by["na"]["ran"] and by["na"]["results"] == {} and by["na"]["reasons"] == {}


def test_registered_metrics_run_in_table_order():
    names = [m.name for m in registered()]
    assert names == ["table1_ied", "table1_reader", "real_edits", "table4_d_errors", "identity_cos",
                     "identity_cos_dlib", "edits_reader", "refit", "refit_floor", "expr_presets",
                     "expr_recognition", "table3_lrw", "training_numbers"]
    after = {m.name: m.after for m in registered()}
    assert all(a is None or names.index(a) < names.index(n) for n, a in after.items())
