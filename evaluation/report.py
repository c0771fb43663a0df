"""``E/metrics.json`` and ``E/index.html`` (self-contained: inline CSS, relative PNG paths)."""
from __future__ import annotations

import html
import math
import os
from pathlib import Path

#: discrete expression classes by label (fitting.model.EXPRESSION_NAMES)
from fitting.model import EXPRESSION_NAMES as EXPRESSIONS  # noqa: E402

#: headline keys of every metrics.json entry (the rest goes to ``extra``)
METRIC_KEYS = ("ied", "ied_vs_copy", "d_rel_error_fit", "d_rel_error_fit_vertex", "d_rel_error_trg",
               "d_rel_error_trg_vertex", "identity_cos", "exp_rel_error_refit", "exp_rel_error_refit_vertex",
               "expr_recognition_acc", "reader_rel_error_trg", "reader_vertex_error_trg",
               "reader_vertex_error_trg_gap", "reader_rel_error_t1", "reader_vertex_error_t1")
SCHEMA = "slidergan-eval/2"

# (metric key, column title, better)
TABLES = [
    ("Table 1 — expression transfer on 4DFAB renders of held-out identities", [
        ("ied", "IED (G(src, p_trg) vs target)", "lower"),
        ("ied_vs_copy", "IED / copy-input IED (goal ≤ 0.85)", "lower"),
        ("reader_rel_error_t1", "reader: ||p_trg − R(G(src,p_trg))|| / ||p_trg||", "lower"),
        ("reader_vertex_error_t1", "reader, vertex space", "lower"),
        ("ied_pairs", "pairs", ""),
    ]),
    ("Table 4 — D's regression error on real test photos", [
        ("d_rel_error_fit", "||p_fit − D(I)|| / ||p_fit||", "lower"),
        ("d_rel_error_fit_vertex", "same, vertex space", "lower"),
        ("d_rel_error_trg", "||p_trg − D(G(I,p_trg))|| / ||p_trg||", "lower"),
        ("d_rel_error_trg_vertex", "same, vertex space", "lower"),
        ("n_test", "test photos", ""),
    ]),
    ("Independent expression reader on the edits of real test photos (beyond the paper)", [
        ("reader_rel_error_trg", "||p_trg − R(G(I,p_trg))|| / ||p_trg||", "lower"),
        ("reader_vertex_error_trg", "same, vertex space", "lower"),
        ("reader_vertex_error_trg_gap", "share of the copy → oracle-3d gap left (goal ≤ 0.5)", "lower"),
    ]),
    ("Table 2 — expression recognition of edited photos", [
        ("expr_recognition_acc", "accuracy (7 classes)", "higher"),
        ("classifier_real_acc", "classifier on real test photos", "reference"),
        ("expr_n", "classified edits", ""),
    ]),
    ("Identity and refit (beyond the paper)", [
        ("identity_cos", "identity cosine (input vs edit)", "higher"),
        ("identity_cos_dlib", "identity cosine, dlib ResNet (independent)", "higher"),
        ("exp_rel_error_refit", "3DMM refit ||p_trg − p_refit|| / ||p_trg||", "lower"),
        ("exp_rel_error_refit_vertex", "same, vertex space", "lower"),
        ("refit_real_floor", "refit of the unedited photos vs their fits (floor)", "reference"),
        ("refit_real_floor_vertex", "floor, vertex space", "reference"),
        ("refit_no_face", "edits without a detected face", ""),
    ]),
    ("Table 3 — expression + speech transfer in held-out LRW videos (RUN/lrw-fits, split test)", [
        ("lrw_ied", "IED (G(frame a, p_b) vs frame b aligned to a)", "lower"),
        ("lrw_ied_vs_copy", "IED / copy-input's IED", "lower"),
        ("lrw_pairs", "pairs", ""),
    ]),
    ("Training: final held-out validation of each run (T/metrics.jsonl)", [
        ("train_val_l1", "paired L1 G(src, p_trg) vs target warp", "lower"),
        ("train_val_l1_copy", "L1 of the unedited source (copy)", "reference"),
        ("train_val_l1_wrong", "L1 with a wrong target", "reference"),
        ("train_val_step", "at step", ""),
    ]),
]

#: columns where a model must beat copy-input to do anything at all (a model cell that does
#: not is marked "not better than copy-input"); identity_cos and d_rel_error_fit are not among
#: them (copying wins identity trivially; D's reading of the input does not depend on G)
BEAT_COPY = {"ied", "ied_vs_copy", "reader_rel_error_t1", "reader_vertex_error_t1", "d_rel_error_trg",
             "d_rel_error_trg_vertex", "reader_rel_error_trg", "reader_vertex_error_trg", "reader_vertex_error_trg_gap",
             "expr_recognition_acc",
             "exp_rel_error_refit", "exp_rel_error_refit_vertex", "lrw_ied", "lrw_ied_vs_copy"}

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 4px}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td.name,th.name{text-align:left}td.null{color:#a33}td.na{color:#999;text-align:center}td.best{font-weight:bold;background:#eef7ee}
tr.baseline td{background:#f6f6fb;font-style:italic}td.worse{color:#a33;text-decoration:underline dotted}
.note{color:#555;font-size:13px}img{max-width:100%;border:1px solid #ddd;margin:4px 0}
ul.reasons{font-size:13px;color:#633}
"""


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return html.escape(str(v))


def _entry(r: dict) -> dict:
    obj = {k: r["metrics"].get(k) for k in METRIC_KEYS}
    obj["reasons"] = {k: v for k, v in r["reasons"].items()}
    obj["extra"] = {k: v for k, v in r["metrics"].items() if k not in METRIC_KEYS}
    for k in ("kind", "variant", "checkpoint", "step", "note", "regressor"):
        if k in r:
            obj[k] = r.get(k)
    return obj


def metrics_json(results: dict, baselines: dict | None = None, reader: dict | None = None,
                 curves: dict | None = None) -> dict:
    """The metrics.json object (docs/evaluation.md): ``{"schema", "models": {name: entry},
    "baselines": {"copy-input": entry, "oracle-3d": entry}, "reader": {...}, "curves": {...}}``
    plus each model's entry again under its name at the top level (the layout before
    baselines; kept for older readers). entry = {headline keys, "reasons", "extra", "kind", ...}."""
    models = {name: _entry(r) for name, r in results.items()}
    out = {"schema": SCHEMA, "models": models, "baselines": {n: _entry(r) for n, r in (baselines or {}).items()},
           "reader": {k: v for k, v in (reader or {}).items() if k != "summary"},
           "curves": dict(curves or {})}
    for name, obj in models.items():
        out.setdefault(name, obj)
    return out


def _best(values, better):
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) < 2 or better not in ("lower", "higher"):
        return None
    return min(nums) if better == "lower" else max(nums)


def _per_class_table(results: dict, names: list) -> list:
    """Table 2 broken down by target expression (rows: checkpoints)."""
    parts = []
    per = {n: results[n]["metrics"].get("expr_per_class") for n in names}
    if any(per.values()):
        classes = sorted({int(c) for v in per.values() if v for c in v})
        parts.append("<h3>Table 2 per target expression (share of edits recognised as the target)</h3>"
                     "<table><tr><th class='name'>checkpoint</th>"
                     + "".join(f"<th>{html.escape(EXPRESSIONS[c] if c < len(EXPRESSIONS) else str(c))}</th>"
                               for c in classes) + "</tr>")
        for n in names:
            row = per[n] or {}
            parts.append(f"<tr><td class='name'>{html.escape(n)}</td>" + "".join(
                f"<td>{_fmt(row.get(str(c)))}</td>" if str(c) in row else "<td class='na'>—</td>"
                for c in classes) + "</tr>")
        parts.append("</table>")
    return parts


def _cell(m: dict, reasons: dict, k: str, best, copy_value, better: str, is_model: bool) -> str:
    if k not in m:  # not applicable to this row (e.g. a secondary count, training numbers of a baseline)
        return "<td class='na'>—</td>"
    v = m.get(k)
    if v is None:
        return f"<td class='null' title='{html.escape(reasons.get(k, ''), quote=True)}'>null</td>"
    cls, title = [], ""
    if is_model and best is not None and v == best:
        cls.append("best")
    if (is_model and k in BEAT_COPY and isinstance(copy_value, (int, float)) and better in ("lower", "higher")
            and isinstance(v, (int, float)) and (v >= copy_value if better == "lower" else v <= copy_value)):
        cls.append("worse")
        title = f" title='not better than copy-input ({_fmt(copy_value)})'"
    return f"<td class='{' '.join(cls)}'{title}>{_fmt(v)}</td>"


def render_html(results: dict, figures: dict, info: dict, baselines: dict | None = None,
                reader: dict | None = None, curves: dict | None = None) -> str:
    """The report page. results {name: {...}} (checkpoints), figures {name: [(title, relpath), ...]},
    info {k: v}, baselines {name: {...}} (rows in every table, below the checkpoints), reader
    (the reader block of metrics.json), curves {"figure": relpath | None, "note": str}."""
    names = list(results)
    baselines = baselines or {}
    rows = [(n, results[n], True) for n in names] + [(n, r, False) for n, r in baselines.items()]
    copy = baselines.get("copy-input", {}).get("metrics", {})
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>SliderGAN evaluation</title>",
             f"<style>{CSS}</style></head><body>", "<h1>SliderGAN evaluation</h1>"]
    parts.append("<table><tr><th class='name'>checkpoint</th><th class='name'>variant</th><th>step</th>"
                 "<th class='name'>E</th><th class='name'>file</th></tr>")
    for n in names:
        r = results[n]
        parts.append(f"<tr><td class='name'>{html.escape(n)}</td><td class='name'>{html.escape(str(r.get('variant')))}</td>"
                     f"<td>{_fmt(r.get('step'))}</td><td class='name'>{_fmt(r.get('n_params'))}</td>"
                     f"<td class='name'>{html.escape(str(r.get('checkpoint')))}</td></tr>")
    for n, r in baselines.items():
        parts.append(f"<tr class='baseline'><td class='name'>{html.escape(n)}</td><td class='name'>baseline</td>"
                     f"<td>—</td><td class='name'>{_fmt(r.get('n_params'))}</td>"
                     f"<td class='name'>{html.escape(str(r.get('note', '')))}"
                     + (f" (regression: {html.escape(str(r['regressor']))}'s D)" if r.get("regressor") else "")
                     + "</td></tr>")
    parts.append("</table>")
    if baselines:
        parts.append("<p class='note'>Baseline rows (italic) go through the same protocols: <b>copy-input</b> "
                     "returns the input unedited (what a model that does nothing scores); <b>oracle-3d</b> is the "
                     "3D warp of the image's own fit to the target (what the training warps show). A model value "
                     "<span style='color:#a33;text-decoration:underline dotted'>underlined in red</span> is not "
                     "better than copy-input.</p>")
    if curves is not None:
        parts.append("<h2>Training curves</h2>")
        if curves.get("figure"):
            rel_url = "/".join(Path(curves["figure"]).parts)
            parts.append(f"<img src='{html.escape(rel_url, quote=True)}' alt='training curves'>")
        parts.append(f"<p class='note'>{html.escape(str(curves.get('note', '')))}</p>")
    if info:
        parts.append("<p class='note'>" + "<br>".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in info.items())
                     + "</p>")
    for caption, cols in TABLES:
        parts.append(f"<h2>{html.escape(caption)}</h2>")
        if caption.startswith("Independent expression reader") and reader is not None:
            parts.append(f"<p class='note'>reader: {html.escape(str(reader.get('summary') or reader.get('reason')))}</p>")
        parts.append("<table><tr><th class='name'>checkpoint</th>")
        for _, title, better in cols:
            arrow = {"lower": " ↓", "higher": " ↑"}.get(better, "")
            parts.append(f"<th>{html.escape(title)}{arrow}</th>")
        parts.append("</tr>")
        bests = {k: _best([results[n]["metrics"].get(k) for n in names], b) for k, _, b in cols}
        for n, r, is_model in rows:
            m = r["metrics"]
            row_cls = "" if is_model else " class='baseline'"
            parts.append(f"<tr{row_cls}><td class='name'>{html.escape(n)}</td>")
            for k, _, better in cols:
                parts.append(_cell(m, r["reasons"], k, bests[k], copy.get(k), better, is_model))
            parts.append("</tr>")
        parts.append("</table>")
        reasons = [(n, k, r["reasons"][k]) for n, r, _ in rows for k, _, _ in cols
                   if k in r["metrics"] and r["metrics"].get(k) is None and k in r["reasons"]]
        if reasons:
            parts.append("<ul class='reasons'>" + "".join(
                f"<li>{html.escape(n)} / {html.escape(k)}: null — {html.escape(why)}</li>" for n, k, why in reasons)
                + "</ul>")
        if caption.startswith("Table 2"):
            parts += _per_class_table({**results, **baselines}, names + list(baselines))
    notes = [(n, k, v) for n, r, _ in rows for k, v in r.get("notes", {}).items()]
    if notes:
        parts.append("<h2>Notes</h2><ul class='note'>" + "".join(
            f"<li>{html.escape(n)} / {html.escape(k)}: {html.escape(str(v))}</li>" for n, k, v in notes) + "</ul>")
    for n in names:
        figs = figures.get(n, [])
        parts.append(f"<h2>Figures — {html.escape(n)}</h2>")
        if not figs:
            parts.append("<p class='note'>no figures</p>")
        for title, rel in figs:
            rel_url = "/".join(Path(rel).parts)
            parts.append(f"<h3>{html.escape(title)}</h3><img src='{html.escape(rel_url, quote=True)}' "
                         f"alt='{html.escape(title, quote=True)}'>")
    parts.append("</body></html>\n")
    return "".join(parts)


def save_png(img, path: os.PathLike) -> None:
    """PIL image -> PNG written atomically."""
    from pipeline.atomic import atomic_write_with

    atomic_write_with(path, lambda tmp: img.save(tmp, format="PNG", compress_level=4))


def write_report(out_dir: os.PathLike, results: dict, figures: dict, info: dict, baselines: dict | None = None,
                 reader: dict | None = None, curves: dict | None = None) -> tuple[Path, Path]:
    """Write metrics.json then index.html atomically; returns their paths."""
    from pipeline.atomic import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mj = out / "metrics.json"
    atomic_write_json(mj, _jsonable(metrics_json(results, baselines, reader, curves)))
    page = out / "index.html"
    atomic_write_text(page, render_html(results, figures, info, baselines, reader, curves))
    return mj, page


def _jsonable(x):
    import numpy as np

    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    return x
