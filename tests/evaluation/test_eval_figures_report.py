"""Figures and the report page."""
import numpy as np
import pytest

from evaluation import figures, report


def test_slider_values():
    v = figures.slider_values(0.2)
    assert len(v) == 11 and v[0] == -1.0 and v[-1] == 1.0 and v[5] == 0.0
    assert np.allclose(np.diff(v), 0.2)


def test_blendshape_renderer_shows_the_parameter():
    from tests.evaluation.evalfixtures import tiny_model

    model = tiny_model()
    r = figures.BlendshapeRenderer(model, size=48)
    a = r(np.zeros(30))
    assert a.shape == (48, 48, 3) and a.dtype == np.uint8
    assert (a < 250).any() and (a == 255).any()           # a mesh over a white background
    e = np.zeros(40)
    e[0] = 1.0
    assert np.abs(r(e).astype(int) - a).max() > 0          # the blendshape changes the render
    e = np.zeros(40)
    e[35] = 1.0                                            # speech parameters too
    assert np.abs(r(e).astype(int) - a).max() > 0


def test_compose_grid_layout():
    cells = [[np.full((16, 16, 3), 200, np.uint8), None], [np.zeros((16, 16, 3))]]
    im = figures.compose_grid(cells, ["a", "b"], ["x", "y"], cell=16, label_w=30, title="t")
    assert im.size == (30 + 2 * 16, 18 + 22 + 2 * 16)
    px = np.asarray(im)
    assert (px[40 + 5, 30 + 5] == 200).all()               # first cell pasted at (row 0, col 0)
    assert (px[40 + 16 + 5, 30 + 5] == 0).all()            # second row
    assert (px[40 + 5, 30 + 16 + 5] == 255).all()          # None stays empty


def test_report_html_lists_nulls_with_reasons(tmp_path):
    results = {
        "rad": {"metrics": {"ied": 0.01, "d_rel_error_fit": 0.2, "d_rel_error_trg": None, "identity_cos": 0.9,
                            "exp_rel_error_refit": None, "expr_recognition_acc": 0.5},
                "reasons": {"d_rel_error_trg": "no usable rows", "exp_rel_error_refit": "no face <b>"},
                "notes": {}, "variant": "rad", "checkpoint": "a.pt", "step": 3, "n_params": 30},
        "wgp": {"metrics": {"ied": 0.02, "d_rel_error_fit": 0.1, "d_rel_error_trg": 0.3, "identity_cos": 0.8,
                            "exp_rel_error_refit": 0.4, "expr_recognition_acc": 0.6,
                            "expr_per_class": {"4": 0.75, "6": 0.5}},
                "reasons": {}, "notes": {}, "variant": "wgp", "checkpoint": "b.pt", "step": 4, "n_params": 30},
    }
    mj, page = report.write_report(tmp_path, results, {"rad": [("grid", "rad/sliders.png")]}, {"run": "x"})
    import json

    data = json.loads(mj.read_text())
    assert data["rad"]["d_rel_error_trg"] is None and data["rad"]["reasons"]["d_rel_error_trg"] == "no usable rows"
    assert data["wgp"]["exp_rel_error_refit"] == 0.4
    html = page.read_text()
    assert "no face &lt;b&gt;" in html
    assert "src='rad/sliders.png'" in html
    # best value per column marked (lower IED is better -> rad)
    assert "class='best'>0.01<" in html
    assert "class='na'>—<" in html                          # secondary numbers absent -> n/a, not null
    assert "<th>happiness</th><th>surprise</th>" in html and "<td>0.75</td>" in html
    assert html.index("Table 2 —") < html.index("per target expression") < html.index("Table 3")
    assert not list(tmp_path.glob(".*tmp*"))               # no temp files left


def test_expression_names_name_the_labels_the_inputs_carry():
    """The report's column for label c names the expression fitting.inputs gives label c: the
    EmotioNet AU prototypes of Du et al. (PNAS 2014), written out here from the paper."""
    from fitting.inputs import label_from_au

    def aus(*present):
        au = np.zeros(60)
        au[[a - 1 for a in present]] = 1
        return au

    prototypes = {"neutral": (), "anger": (4, 7, 24), "disgust": (9, 10, 17), "fear": (1, 4, 20, 25),
                  "happiness": (12, 25), "sadness": (4, 15), "surprise": (1, 2, 25, 26)}
    assert {name: report.EXPRESSIONS[label_from_au(aus(*a))] for name, a in prototypes.items()} == \
        {name: name for name in prototypes}
    assert len(report.EXPRESSIONS) == len(prototypes)


def test_unique_names_are_safe_folder_names():
    from evaluation.networks import Networks
    from evaluation.options import unique_names

    nets = [Networks(name="", variant=v, G=None, D=None, n_params=30)
            for v in ("rad", "rad", "../x y", "", "rad", "models", "copy-input", "reader")]
    unique_names(nets)
    assert [n.name for n in nets] == ["rad", "rad-2", "x-y", "model", "rad-3", "models-2", "copy-input-2", "reader-2"]


def test_report_baseline_rows_and_copy_marking(tmp_path):
    """Baselines are rows of every table; a model not better than copy-input is marked."""
    def entry(ied, acc, cos, kind="model"):
        return {"metrics": {"ied": ied, "expr_recognition_acc": acc, "identity_cos": cos, "ied_vs_copy": None},
                "reasons": {"ied_vs_copy": "no copy"}, "notes": {}, "variant": "v", "checkpoint": "c.pt", "step": 1,
                "n_params": 30, "kind": kind}
    results = {"rad": entry(0.02, 0.5, 0.9), "wgp": entry(0.04, 0.1, 0.8)}
    base = {"copy-input": dict(entry(0.03, 0.14, 1.0, "baseline"), note="G = identity", regressor="rad"),
            "oracle-3d": dict(entry(0.01, 0.9, 0.95, "baseline"), note="warp", regressor="rad")}
    mj, page = report.write_report(tmp_path, results, {}, {}, baselines=base, reader={"summary": "none (x)"},
                                   curves={"figure": None, "note": "unavailable: no log"})
    import json

    data = json.loads(mj.read_text())
    assert list(data["baselines"]) == ["copy-input", "oracle-3d"] and data["baselines"]["copy-input"]["kind"] == "baseline"
    assert data["baselines"]["copy-input"]["regressor"] == "rad" and data["reader"] == {}
    html = page.read_text()
    t1 = html[html.index("Table 1 —"):html.index("Table 4 —")]
    assert "<td class='best'>0.02</td>" in t1                                   # best among the models only
    assert "<td class='worse' title='not better than copy-input (0.03)'>0.04</td>" in t1
    assert "<tr class='baseline'><td class='name'>oracle-3d</td><td class=''>0.01</td>" in t1
    t2 = html[html.index("Table 2 —"):html.index("Identity and refit")]
    assert "title='not better than copy-input (0.14)'>0.1</td>" in t2
    ident = html[html.index("Identity and refit"):]
    assert "worse" not in ident.split("</table>")[0]                            # copying wins identity trivially
    assert "curves.png" not in html and "unavailable: no log" in html
