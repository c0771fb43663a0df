"""``E/metrics.json`` and ``E/index.html`` (self-contained: inline CSS, relative PNG paths)."""
from __future__ import annotations

import html
import math
import os
from pathlib import Path

#: discrete expression classes by label (fitting.demo_model.EXPRESSION_NAMES)
from fitting.demo_model import EXPRESSION_NAMES as EXPRESSIONS  # noqa: E402

METRIC_KEYS = ("ied", "d_rel_error_fit", "d_rel_error_trg", "identity_cos", "exp_rel_error_refit",
               "expr_recognition_acc")

# (metric key, column title, better, table caption)
TABLES = [
    ("Table 1 — expression transfer on 4DFAB renders of held-out identities", [
        ("ied", "IED (G(src, p_trg) vs target)", "lower"),
        ("ied_identity", "IED (src vs target, no edit)", "reference"),
        ("ied_pairs", "pairs", ""),
    ]),
    ("Table 4 — D's regression error on real test photos", [
        ("d_rel_error_fit", "||p_fit − D(I)|| / ||p_fit||", "lower"),
        ("d_rel_error_trg", "||p_trg − D(G(I,p_trg))|| / ||p_trg||", "lower"),
        ("n_test", "test photos", ""),
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
        ("refit_real_floor", "refit of the unedited photos vs their fits (floor)", "reference"),
        ("refit_no_face", "edits without a detected face", ""),
    ]),
    ("Table 3 — expression + speech transfer in LRW-style sequences", [
        ("lrw_ied", "IED (G(frame a, p_b) vs frame b)", "lower"),
        ("lrw_ied_identity", "IED (frame a vs frame b, no edit)", "reference"),
        ("lrw_pairs", "pairs", ""),
    ]),
]

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0 4px}td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}
th{background:#f0f0f0}td.name,th.name{text-align:left}td.null{color:#a33}td.na{color:#999;text-align:center}td.best{font-weight:bold;background:#eef7ee}
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


def metrics_json(results: dict) -> dict:
    """{name: {six metric keys, "reasons": {...}, "extra": {...}}} from evaluate's results."""
    out = {}
    for name, r in results.items():
        obj = {k: r["metrics"].get(k) for k in METRIC_KEYS}
        obj["reasons"] = {k: v for k, v in r["reasons"].items()}
        obj["extra"] = {k: v for k, v in r["metrics"].items() if k not in METRIC_KEYS}
        obj["variant"] = r.get("variant")
        obj["checkpoint"] = r.get("checkpoint")
        obj["step"] = r.get("step")
        out[name] = obj
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


def render_html(results: dict, figures: dict, info: dict) -> str:
    """The report page. results {name: {...}}, figures {name: [(title, relpath), ...]}, info {k: v}."""
    names = list(results)
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>SliderGAN evaluation</title>",
             f"<style>{CSS}</style></head><body>", "<h1>SliderGAN evaluation</h1>"]
    parts.append("<table><tr><th class='name'>checkpoint</th><th class='name'>variant</th><th>step</th>"
                 "<th class='name'>E</th><th class='name'>file</th></tr>")
    for n in names:
        r = results[n]
        parts.append(f"<tr><td class='name'>{html.escape(n)}</td><td class='name'>{html.escape(str(r.get('variant')))}</td>"
                     f"<td>{_fmt(r.get('step'))}</td><td class='name'>{_fmt(r.get('n_params'))}</td>"
                     f"<td class='name'>{html.escape(str(r.get('checkpoint')))}</td></tr>")
    parts.append("</table>")
    if info:
        parts.append("<p class='note'>" + "<br>".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in info.items())
                     + "</p>")
    for caption, cols in TABLES:
        parts.append(f"<h2>{html.escape(caption)}</h2><table><tr><th class='name'>checkpoint</th>")
        for _, title, better in cols:
            arrow = {"lower": " ↓", "higher": " ↑"}.get(better, "")
            parts.append(f"<th>{html.escape(title)}{arrow}</th>")
        parts.append("</tr>")
        bests = {k: _best([results[n]["metrics"].get(k) for n in names], b) for k, _, b in cols}
        for n in names:
            m = results[n]["metrics"]
            parts.append(f"<tr><td class='name'>{html.escape(n)}</td>")
            for k, _, _ in cols:
                if k not in m:  # not applicable to this checkpoint/run (e.g. a secondary count)
                    parts.append("<td class='na'>—</td>")
                    continue
                v = m.get(k)
                cls = "null" if v is None else ("best" if bests[k] is not None and v == bests[k] else "")
                title = f" title='{html.escape(results[n]['reasons'].get(k, ''), quote=True)}'" if v is None else ""
                parts.append(f"<td class='{cls}'{title}>{_fmt(v)}</td>")
            parts.append("</tr>")
        parts.append("</table>")
        reasons = [(n, k, results[n]["reasons"][k]) for n in names for k, _, _ in cols
                   if results[n]["metrics"].get(k) is None and k in results[n]["reasons"]]
        if reasons:
            parts.append("<ul class='reasons'>" + "".join(
                f"<li>{html.escape(n)} / {html.escape(k)}: null — {html.escape(why)}</li>" for n, k, why in reasons)
                + "</ul>")
        if caption.startswith("Table 2"):
            parts += _per_class_table(results, names)
    notes = [(n, k, v) for n in names for k, v in results[n].get("notes", {}).items()]
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


def write_report(out_dir: os.PathLike, results: dict, figures: dict, info: dict) -> tuple[Path, Path]:
    """Write metrics.json then index.html atomically; returns their paths."""
    from pipeline.atomic import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mj = out / "metrics.json"
    atomic_write_json(mj, _jsonable(metrics_json(results)))
    page = out / "index.html"
    atomic_write_text(page, render_html(results, figures, info))
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
