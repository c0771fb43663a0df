"""The editor's exact shortcut for G's first layer (one photo, many slider moves).

:class:`CachedGenerator` is its own algorithm with its own self-check, so it lives apart from
the editor's glue (:mod:`workflows.editor.core` builds it and calls ``prepare`` / ``forward``).
"""
from __future__ import annotations

import torch


def generated_image(out) -> torch.Tensor:
    """G's edited image [B, 3, H, W] from ``G(x, p, p_src) -> (output, colour, mask)``."""
    return out[0]


class CachedGenerator:
    """G(x, p) for one photo x and many p, exactly, without redoing the photo's share of
    G's first layer on every slider move.

    G (model.networks.Generator) starts with a bias-free k x k convolution (stride 1,
    padding k//2) of ``cat([x, c tiled over H x W])``, ``c = G.conditioning(p, p_src)`` (p
    itself, or p and p - p_src for a generator conditioned on the change); below, p stands for c.  By linearity that is
    ``conv(x; W_x) + conv(tile(p); W_p)``.  The first term depends on the photo only and is
    computed once per photo (``prepare``).  The second is a convolution of a *constant*
    image, so its value at a pixel depends only on how close the pixel is to each border
    (within k//2); it is computed on a (k x k) constant image and expanded by indexing.
    This removes E/(E+3) of the first layer's work (a quarter of G's multiply-adds at
    E = 30, 128x128); the rest of G runs unchanged.

    Hand-written (not a library feature) because it relies on G's first layer; the
    constructor checks the result against ``G(x, p)`` on random inputs and ``ok`` is False
    (callers then use G itself) when G does not have that structure.
    """

    def __init__(self, G, n_params: int, size: int, device: str = "cpu"):
        self.G, self.E, self.size, self.ok = G, int(n_params), int(size), False
        try:
            first = G.main[0]
            k = first.kernel_size[0]
            ok = (isinstance(first, torch.nn.Conv2d) and first.bias is None and first.kernel_size == (k, k)
                  and k % 2 == 1 and first.stride == (1, 1) and first.dilation == (1, 1) and first.groups == 1
                  and first.padding == (k // 2, k // 2) and first.padding_mode == "zeros"
                  and first.in_channels == 3 + self.E * (2 if getattr(G, "needs_source", False) else 1)
                  and size > k
                  and hasattr(G, "colour") and hasattr(G, "mask"))
        except (AttributeError, IndexError, TypeError):
            ok = False
        if not ok:
            return
        self.first, self.r = first, k // 2
        r = self.r
        self.index = torch.tensor(list(range(r)) + [r] * (size - 2 * r) + list(range(r + 1, 2 * r + 1)),
                                  device=device)
        with torch.inference_mode():
            gen = torch.Generator().manual_seed(0)
            x = torch.rand(1, 3, size, size, generator=gen).to(device) * 2 - 1
            p = (torch.rand(1, self.E, generator=gen) * 2 - 1).to(device)
            p_src = (torch.rand(1, self.E, generator=gen) * 2 - 1).to(device)
            want = generated_image(G(x, p, p_src))
            self.ok = True
            got = self.forward(x, self.prepare(x), p, p_src)
            self.ok = bool(torch.allclose(got, want, atol=1e-4, rtol=1e-4))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The photo's share of the first layer: x [1, 3, S, S] -> [1, C, S, S]."""
        return torch.nn.functional.conv2d(x, self.first.weight[:, :3], padding=self.r)

    def forward(self, x: torch.Tensor, x_feat: torch.Tensor, p: torch.Tensor,
                p_src: torch.Tensor | None = None) -> torch.Tensor:
        """G(x, p, p_src)'s output image [1, 3, S, S] from ``prepare(x)``, p [1, E] and the
        photo's own p_src [1, E] (used only by a generator conditioned on the change)."""
        k = 2 * self.r + 1
        c = self.G.conditioning(p, p_src) if hasattr(self.G, "conditioning") else p
        const = c.to(x.dtype)[:, :, None, None].expand(-1, -1, k, k)
        small = torch.nn.functional.conv2d(const, self.first.weight[:, 3:], padding=self.r)  # [1, C, k, k]
        h = x_feat + small[:, :, self.index][:, :, :, self.index]
        h = self.G.main[1:](h)
        colour, mask = self.G.heads(h, x) if hasattr(self.G, "heads") else (self.G.colour(h), self.G.mask(h))
        return mask * colour + (1.0 - mask) * x
