"""Front renders of a 3DMM's blendshapes (a person checks that names match motions)."""
from __future__ import annotations

import numpy as np


def blendshape_sheet(model, n: int = 10, size: int = 160, values=(-1.0, 0.0, 1.0)):
    """PIL image: one row per expression component (first ``n``), one column per value,
    each a frontal render of ``model.instance(p_exp = value * e_i)`` with the mean texture."""
    from PIL import Image, ImageDraw

    from render import render
    from render.camera import camera_fitting_view

    n = min(n, model.n_exp)
    tex = model.texture()
    cam = camera_fitting_view(model.mean_shape, (size, size))
    light = np.zeros((9, 3), np.float32)
    light[0], light[1], light[2] = 0.9, 0.1, 0.35   # ambient + a little from above/front
    label_w = 170
    sheet = Image.new("RGB", (label_w + size * len(values), 20 + size * n), "white")
    draw = ImageDraw.Draw(sheet)
    for j, v in enumerate(values):
        draw.text((label_w + j * size + size // 2 - 8, 4), f"{v:+.0f}" if v else "0", fill="black")
    for i in range(n):
        for j, v in enumerate(values):
            p = np.zeros(model.n_exp, np.float32)
            p[i] = v
            r = render(model.instance(None, p), model.trilist, tex, cam, background=(size, size), light=light)
            sheet.paste(Image.fromarray((np.clip(r.image, 0, 1) * 255).astype(np.uint8)),
                        (label_w + j * size, 20 + i * size))
        draw.text((8, 20 + i * size + size // 2 - 6), f"{i}: {model.exp_names[i]}", fill="black")
    return sheet
