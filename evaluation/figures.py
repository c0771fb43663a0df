"""Figures of the report (PNG via Pillow): slider grids with the 3D blendshape renders,
random multi-parameter edits, transfer and interpolation with D's regressed parameters,
the seven discrete expressions, neutralisation, expression + speech.

Every figure is a grid of 128x128 cells composed by :func:`compose_grid`; the 3D rows are
rendered by :class:`BlendshapeRenderer` (``render.render`` of ``model.instance(p_id=0,
p_exp)`` seen from the front, grey albedo, fixed light).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from evaluation.metrics import to_uint8
from evaluation.networks import Networks, generate, regress


class BlendshapeRenderer:
    """Frontal render of the mean identity with an expression: ``(p_exp [E']) -> uint8 [S,S,3]``."""

    def __init__(self, model, size: int = 128, backend: str = "fast"):
        from render.camera import camera_fitting_view
        from render.lighting import AMBIENT

        self.model = model
        self.size = size
        self.backend = backend
        mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
        self.camera = camera_fitting_view(mean, (size, size), fill=0.9)
        self.colours = np.full((len(mean), 3), 0.78, np.float32)
        # uniform light plus a frontal (z) and slightly top (y) Lambertian lobe
        light = 0.45 * np.asarray(AMBIENT, np.float64)
        a1c1 = (2 * np.pi / 3) * 0.488603
        light[2] = 0.55 / a1c1
        light[1] = 0.15 / a1c1
        self.light = light
        self.triangles = np.asarray(model.trilist, np.int64)

    def __call__(self, p_exp) -> np.ndarray:
        from render import render

        p = np.asarray(p_exp, np.float32)
        p = p[: self.model.n_exp + self.model.n_speech]
        V = self.model.instance(p_id=None, p_exp=p)
        res = render(V, self.triangles, self.colours, self.camera, background=(self.size, self.size),
                     light=self.light, backend=self.backend)
        bg = np.where(res.mask[..., None], res.image, 1.0)
        return to_uint8(bg)


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow
        return ImageFont.load_default()


def compose_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str] | None = None,
                 col_labels: Sequence[str] | None = None, cell: int = 128, label_w: int = 120,
                 title: str | None = None):
    """A labelled grid of images (each uint8 or float [h,w,3]; None = empty cell) -> PIL.Image RGB."""
    from PIL import Image, ImageDraw

    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    top = (18 if col_labels else 0) + (22 if title else 0)
    left = label_w if row_labels else 0
    W = left + n_cols * cell
    H = top + n_rows * cell
    canvas = Image.new("RGB", (max(W, 1), max(H, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    if title:
        draw.text((4, 3), title, fill=(0, 0, 0), font=_font(15))
    if col_labels:
        y = 22 if title else 0
        for j, t in enumerate(col_labels):
            draw.text((left + j * cell + 4, y + 2), str(t), fill=(0, 0, 0), font=font)
    for i, r in enumerate(rows):
        y0 = top + i * cell
        if row_labels:
            draw.text((4, y0 + cell // 2 - 7), str(row_labels[i])[:18], fill=(0, 0, 0), font=font)
        for j, im in enumerate(r):
            if im is None:
                continue
            a = to_uint8(im)
            tile = Image.fromarray(np.ascontiguousarray(a))
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.BILINEAR)
            canvas.paste(tile, (left + j * cell, y0))
    return canvas


def slider_values(step: float = 0.2) -> np.ndarray:
    """-1 .. 1 in ``step`` increments (rounded to avoid float drift) -> [K]."""
    n = int(round(2.0 / step)) + 1
    return np.round(np.linspace(-1.0, 1.0, n), 6)


def _rep(p_src, n: int):
    """A photo's own parameters [E] repeated for ``n`` edits -> [n, E] (None stays None)."""
    return None if p_src is None else np.repeat(np.asarray(p_src, np.float32)[None], n, 0)


def slider_grid(nets: Networks, image, renderer: BlendshapeRenderer | None, names: Sequence[str],
                n_params: int, step: float = 0.2, offset: int = 0, title: str = "single-parameter sliders",
                p_src=None):
    """Rows: for each parameter k in offset..offset+n_params-1, the 3D render of v*e_k (if a
    renderer is given) above G(image, v*e_k), for v from -1 to 1. ``p_src [E]``: the photo's
    own parameters (its fit), which a generator conditioned on the change needs (here and in
    every figure below: ``*_src`` are the inputs' parameters, one row per input)."""
    vals = slider_values(step)
    E = nets.n_params
    ks = list(range(offset, min(E, offset + n_params)))
    rows, labels = [], []
    for k in ks:
        P = np.zeros((len(vals), E), np.float32)
        P[:, k] = vals
        edits = generate(nets, np.repeat(image[None], len(vals), 0), P, _rep(p_src, len(vals)))
        name = names[k] if k < len(names) else f"p{k}"
        if renderer is not None:
            rows.append([renderer(p) for p in P])
            labels.append(f"{k}: {name} (3D)")
        rows.append(list(edits))
        labels.append(f"{k}: {name}")
    return compose_grid(rows, labels, [f"{v:+.1f}" for v in vals], title=title)


def random_edits(nets: Networks, images, renderer, n: int = 6, seed: int = 0, p_src=None):
    """For each input photo a row: input, then G(image, p) for ``n`` random p ~ U[-1,1]^E, with
    the 3D render of each p in the row above."""
    rng = np.random.default_rng(seed)
    P = rng.uniform(-1, 1, (n, nets.n_params)).astype(np.float32)
    rows, labels = [], []
    if renderer is not None:
        rows.append([None] + [renderer(p) for p in P])
        labels.append("3D target")
    for i, im in enumerate(images):
        rows.append([im] + list(generate(nets, np.repeat(im[None], n, 0), P,
                                         None if p_src is None else _rep(p_src[i], n))))
        labels.append(f"photo {i}")
    return compose_grid(rows, labels, ["input"] + [f"p{j}" for j in range(n)], title="random multi-parameter edits")


def transfer_grid(nets: Networks, sources, targets, p_src=None):
    """Expression transfer: G(source_i, D(target_j)). First row the targets, first column the sources."""
    p = regress(nets, targets)
    rows = [[None] + list(targets)]
    for i, s in enumerate(sources):
        rows.append([s] + list(generate(nets, np.repeat(s[None], len(targets), 0), p,
                                        None if p_src is None else _rep(p_src[i], len(targets)))))
    return compose_grid(rows, ["targets"] + [f"source {i}" for i in range(len(sources))],
                        ["source"] + [f"D(target {j})" for j in range(len(targets))],
                        title="expression transfer with D's regressed parameters")


def interpolation_grid(nets: Networks, pairs, steps: int = 7, p_src=None):
    """Interpolate from D(source) to D(target): G(source, (1-t) D(s) + t D(t)), t in [0, 1]."""
    ts = np.linspace(0, 1, steps)
    rows = []
    for i, (s, t) in enumerate(pairs):
        ps, pt = regress(nets, np.stack([s, t]))
        P = ((1 - ts)[:, None] * ps[None] + ts[:, None] * pt[None]).astype(np.float32)
        rows.append([s] + list(generate(nets, np.repeat(s[None], steps, 0), P,
                                        None if p_src is None else _rep(p_src[i], steps))) + [t])
    return compose_grid(rows, None, ["source"] + [f"t={v:.2f}" for v in ts] + ["target"],
                        title="interpolation between D's regressed parameters")


def discrete_expressions(nets: Networks, images, presets, have, names, renderer=None, p_src=None):
    """Each photo translated to the seven discrete-expression presets (3D renders above)."""
    cls = [c for c in range(len(presets)) if have[c]]
    rows, labels = [], []
    if renderer is not None:
        rows.append([None] + [renderer(presets[c]) for c in cls])
        labels.append("3D preset")
    for i, im in enumerate(images):
        rows.append([im] + list(generate(nets, np.repeat(im[None], len(cls), 0), presets[cls],
                                         None if p_src is None else _rep(p_src[i], len(cls)))))
        labels.append(f"photo {i}")
    return compose_grid(rows, labels, ["input"] + [names[c] for c in cls], title="discrete expressions")


def neutralisation(nets: Networks, images, p_src=None):
    """Input above G(image, 0)."""
    out = generate(nets, images, np.zeros((len(images), nets.n_params), np.float32), p_src)
    return compose_grid([list(images), list(out)], ["input", "p = 0"], None, title="neutralisation")
