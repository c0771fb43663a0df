"""3D warps of a fitted photo (paper Sec. 4.1, "3D warped images").

For one fitted photo (identity ``p_id``, expression ``p_fit``, camera, 2x3 alignment):

1. **Texture** (once per photo): project the fitted shape with the fit camera, sample the
   full-resolution photo bilinearly at every vertex (:func:`render.sample_vertex_colours`).
   Vertices the camera does not see (z-buffer test, facing away: normal . view <
   ``grazing``, or a bilinear sample touching a pixel off the face) take *no* colour from
   the photo; they are filled by :func:`fill_occluded` (visible neighbours just beyond the
   silhouette, then the mirrored vertex, then nearest resolved vertices); vertices turned
   well away (normal . view < -0.3) can never show with the photo's camera and just take
   the mean colour; the hidden inside of the mouth is dark.
2. **Background** (once per photo): the photo resampled into the 128x128 crop with the
   fit's ``align``; the footprint of the *original* fitted face (its render mask, holes
   such as the mouth filled, dilated by ``dilate`` px) is inpainted from its surroundings
   (:func:`inpaint`, push-pull), so a face that shrinks leaves no stale face pixels.
3. **Renders** (``per_face`` times): the new shape ``instance(p_id, p_k)`` with the sampled
   colours, plus a **mouth cavity** (:class:`MouthCavity`: the mouth hole of the mesh is
   closed by a dark, recessed cap, so an opening jaw shows a dark mouth, not background),
   rendered with the z-buffered rasteriser over the inpainted background.

Render space (``space``): ``"crop"`` (default) folds the similarity ``align`` into the
camera (:func:`fold_align`: image-plane rotation -> roll, scale, shift; exact for weak
and full perspective) and renders directly at 128x128; ``"full"`` renders at the photo's
resolution and then resamples with ``align``, as the paper describes.  Both give the same
image up to resampling (tests/warps/test_warp.py checks the bound); ``crop`` is ~10x
cheaper on large photos and resamples the photo only once.  A non-similarity ``align``
(reflection or shear) falls back to ``full``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fitting.warp_image import crop_photo, fold_align, inpaint, is_similarity, texture_resolution, warp_affine
from fitting.warp_mesh import MouthCavity, MouthStretch, fill_occluded, mirror_map, mouth_interior, nearest_vertices

SPACES = ("crop", "full")


# ----------------------------------------------------------------------------- the warper
@dataclass
class WarpSource:
    """Per-photo state reused by every warp of that photo."""
    shape_id: np.ndarray       # [N, 3] float32: mean + identity offset (expression-free)
    colours: np.ndarray        # [N, 3] float32 in [0, 1] (sampled + filled)
    visible: np.ndarray        # [N] bool: vertices whose colour came from the photo
    camera: np.ndarray         # [7] the camera the renders use (crop camera when space == crop)
    background: np.ndarray     # [h, w, 3] float32: inpainted background in render space
    footprint: np.ndarray      # [h, w] bool: inpainted region (original face footprint)
    align: np.ndarray          # [2, 3]
    space: str                 # "crop" | "full"


class Warper:
    """Renders random-expression warps of fitted photos (see module docstring).

    ``Warper(model, size=128, backend="fast", space="crop", cavity=True)``;
    ``src = warper.prepare(photo, p_id, p_exp, camera, align)``;
    ``images = warper.render(src, P)`` with ``P [k, E]`` normalised -> ``uint8 [k, size, size, 3]``.
    """

    def __init__(self, model, size: int = 128, backend: str = "fast", space: str = "crop",
                 cavity: bool = True, grazing: float = 0.05, dilate: int = 1, supersample: int = 1):
        if space not in SPACES:
            raise ValueError(f"unknown render space {space!r} (expected one of {SPACES})")
        if int(supersample) < 1:
            raise ValueError(f"supersample must be >= 1, got {supersample}")
        self.supersample = int(supersample)
        self.model = model
        self.size = int(size)
        self.backend = backend
        self.space = space
        self.grazing = float(grazing)
        self.dilate = int(dilate)
        self.triangles = np.asarray(model.trilist, np.int64)
        mean = np.asarray(model.mean, np.float64).reshape(-1, 3)
        self.n = len(mean)
        self.cavity = MouthCavity.find(self.triangles, mean, model.landmarks) if cavity else None
        self.triangles_ext = (np.concatenate([self.triangles, self.cavity.triangles()])
                              if self.cavity is not None else self.triangles)
        self.mirror = mirror_map(mean)
        self.points = mean
        self.neighbours = nearest_vertices(mean)
        self.interior, self.interior_t = (mouth_interior(mean, self.triangles, model.landmarks, self.cavity.loop)
                                          if self.cavity is not None else (np.zeros(self.n, bool), np.zeros(self.n)))
        lips = np.zeros(self.n, bool)
        if self.cavity is not None and len(model.landmarks) >= 68:
            from matplotlib.path import Path as _Path
            outer = _Path(mean[np.asarray(model.landmarks)[48:60], :2])
            lips = outer.contains_points(mean[:, :2]) & ~self.interior
        self.cavity_lips = lips
        self.stretch = MouthStretch.build(mean, self.triangles, model.landmarks) if cavity else None
        self._Bexp = None

    # -- shapes
    def shapes(self, shape_id, P) -> np.ndarray:
        """``shape_id [N, 3]`` + expression offsets for ``P [k, E]`` -> ``[k, N, 3]`` float32."""
        P = np.atleast_2d(np.asarray(P, np.float32))
        if self._Bexp is None or self._Bexp.shape[0] != P.shape[1]:
            U, ev = self.model._exp_basis_np(P.shape[1]) if hasattr(self.model, "_exp_basis_np") else (
                self.model.U_exp[:, :P.shape[1]], self.model.ev_exp[:P.shape[1]])
            self._Bexp = (np.asarray(U, np.float32) * np.sqrt(np.asarray(ev, np.float32))[None]).T.copy()  # [E, 3N]
        off = P @ self._Bexp
        return (np.asarray(shape_id, np.float32).reshape(1, -1) + off).reshape(len(P), self.n, 3)

    def with_cavity(self, V, C) -> tuple[np.ndarray, np.ndarray]:
        """Append the mouth cavity's vertices/colours: ``[N', 3]`` each."""
        if self.cavity is None:
            return V, C
        return (np.vstack([V, self.cavity.vertices(V)]), np.vstack([C, self.cavity.colours(C)]))

    # -- per photo
    def sample_colours(self, photo, V, camera) -> tuple[np.ndarray, np.ndarray]:
        """Visibility-aware vertex colours from ``photo [H, W, 3] uint8`` for shape ``V [N, 3]``:
        ``(colours [N, 3] float32, visible [N] bool)``; invisible vertices are filled."""
        from render import sample_vertex_colours
        from render.camera import project, to_camera_frame
        from render.lighting import vertex_normals

        cols, vis = sample_vertex_colours(photo, V, self.triangles, camera)
        # the bilinear sample must not mix in pixels off the face (silhouette fringe): all four
        # pixels around the sample point must be covered by the face in the photo
        from render import render as _render

        H, W = photo.shape[:2]
        mask = _render(V, self.triangles, np.zeros_like(V), camera, background=(H, W)).mask
        uv = project(V, camera)
        j0 = np.floor(uv[:, 0] - 0.5).astype(np.int64)
        i0 = np.floor(uv[:, 1] - 0.5).astype(np.int64)
        on_face = np.ones(len(V), bool)
        for di in (0, 1):
            for dj in (0, 1):
                ii, jj = np.clip(i0 + di, 0, H - 1), np.clip(j0 + dj, 0, W - 1)
                on_face &= mask[ii, jj]
        vis = vis & on_face
        if self.grazing > -1:
            cam = np.asarray(camera, np.float64)
            Xc = to_camera_frame(V, cam)
            nrm = vertex_normals(Xc, self.triangles)
            if cam[6] > 0:  # perspective: view direction from the vertex to the eye
                view = np.array([0.0, 0.0, cam[6]]) - Xc
                view /= np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
                facing = (nrm * view).sum(1)
            else:
                facing = nrm[:, 2]
            vis = vis & (facing > self.grazing)
            away = facing < -0.3
        else:
            away = np.zeros(len(V), bool)
        known = vis.copy()
        hidden_mouth = self.interior & ~vis
        if hidden_mouth.any() and self.cavity is not None:
            # the rolled-in inner lips and mouth walls the photo does not show: dark, darker
            # towards the throat, scaled by the photo's lip colour (exposure)
            lip = cols[self.cavity_lips & vis].mean(0) if (self.cavity_lips & vis).any() else cols[vis].mean(0)
            t = self.interior_t[hidden_mouth, None]
            cols[hidden_mouth] = lip * (self.cavity.ring_colour * (1 - t) + self.cavity.centre_colour * t)
            known |= hidden_mouth
        # vertices turned well away from the camera stay unseen whatever the expression (the
        # camera is the photo's): they take the mean colour and skip the fill (~half its work
        # on a turned face)
        away &= ~known
        return fill_occluded(cols, known, self.points, self.mirror, neighbours=self.neighbours, ignore=away), vis

    def prepare(self, photo, p_id, p_exp, camera, align) -> WarpSource:
        """Per-photo state: texture, render-space camera, inpainted background.

        photo ``[H, W, 3] uint8``; p_id ``[K']``, p_exp ``[E']`` normalised; camera ``[7]``;
        align ``[2, 3]`` (original pixels -> crop pixels)."""
        from scipy.ndimage import binary_dilation, binary_fill_holes

        from render import render

        photo = np.asarray(photo)
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise ValueError(f"photo must be uint8 [H, W, 3], got {photo.dtype} {photo.shape}")
        camera = np.asarray(camera, np.float32)
        align = np.asarray(align, np.float32)
        shape_id = np.asarray(self.model.instance(p_id=np.asarray(p_id, np.float32)), np.float32)
        V0 = self.shapes(shape_id, np.asarray(p_exp, np.float32)[None])[0]
        tex_photo, tex_cam = texture_resolution(photo, camera, align)
        colours, vis = self.sample_colours(tex_photo, V0, tex_cam)
        space = self.space if is_similarity(align) else "full"
        if space == "crop":
            cam = fold_align(camera, align)
            bg = crop_photo(photo, align, self.size)
        else:
            cam = camera
            bg = photo.astype(np.float32) / 255.0
        r = render(V0, self.triangles, colours, cam, background=bg.shape[:2], backend="fast")
        foot = binary_fill_holes(r.mask)
        if self.dilate > 0:
            foot = binary_dilation(foot, iterations=self.dilate)
        bg = inpaint(bg, foot)
        return WarpSource(shape_id, colours, vis, cam, bg, foot, align, space)

    def _render_fast(self, V, C, camera, background) -> tuple[np.ndarray, np.ndarray]:
        """``render.render(V, triangles_ext, C, camera, background, backend="fast")``'s image
        and mask without its per-call argument checks and conversions (the mesh, triangles
        and background are validated once per photo; ~30% of a warp's time went there).
        Same camera transform and rasteriser; checked against ``render.render`` by the tests.
        Returns ``(image float32 [H, W, 3], mask bool [H, W])``."""
        from render.core import camera_transform
        from render.raster import rasterize

        Xc, uv, w = camera_transform(V, np.asarray(camera, np.float64))
        tri, bary, _ = rasterize(uv, Xc[:, 2], w, self.triangles_ext, background.shape[:2])
        mask = tri >= 0
        ii, jj = np.nonzero(mask)
        img = background.copy()
        if len(ii):
            t = self.triangles_ext[tri[ii, jj]]
            img[ii, jj] = np.einsum("pk,pkc->pc", bary[ii, jj], C[t])
        return img, mask

    def render(self, src: WarpSource, P, return_masks: bool = False):
        """Warps of one photo: ``P [k, E]`` normalised -> ``uint8 [k, size, size, 3]``
        (and ``bool [k, size, size]`` face masks, cavity included, if ``return_masks``)."""
        imgs, masks = self.render_float(src, P)
        out = np.clip(np.round(imgs * 255.0), 0, 255).astype(np.uint8)
        return (out, masks) if return_masks else out

    def render_change(self, src: WarpSource, P, p_base, base) -> np.ndarray:
        """Change warps: the photo's own crop plus what the 3D model changes, ``base + R(P_k) -
        R(p_base)`` (``R`` = :meth:`render_float`, ``p_base [E]`` the photo's fitted expression,
        ``base`` uint8 ``[size, size, 3]`` the photo's aligned crop) -> ``uint8 [k, size, size, 3]``.
        Where the render does not change (background, the face away from the edit) the photo's
        pixels come back exactly; the photo's texture never passes through the mesh."""
        base = np.asarray(base)
        if base.shape != (self.size, self.size, 3):
            raise ValueError(f"base must be [{self.size}, {self.size}, 3], got {list(base.shape)}")
        P = np.asarray(P, np.float32)
        r0, _ = self.render_float(src, np.asarray(p_base, np.float32)[None])
        imgs, _ = self.render_float(src, P)
        out = base.astype(np.float32)[None] / 255.0 + (imgs - r0)
        return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)

    def render_float(self, src: WarpSource, P) -> tuple[np.ndarray, np.ndarray]:
        """Renders of one photo before quantisation: ``P [k, E]`` -> (float32 ``[k, size, size,
        3]`` in [0, 1], bool ``[k, size, size]`` face masks, cavity included)."""
        from render import render

        Vs = self.shapes(src.shape_id, P)
        out = np.empty((len(Vs), self.size, self.size, 3), np.float32)
        masks = np.empty((len(Vs), self.size, self.size), bool)
        ss = self.supersample if src.space == "crop" else 1
        cam, bg = src.camera, src.background
        if ss > 1:  # render at ss x the crop size, then average ss x ss blocks (anti-aliased edges)
            cam = np.asarray(cam, np.float64).copy()
            cam[3:6] *= ss                     # corner-origin pixels: u' = ss * u exactly
            bg = np.repeat(np.repeat(bg, ss, 0), ss, 1)
        for i, V in enumerate(Vs):
            C = self.stretch.apply(V, src.colours, src.shape_id) if self.stretch is not None else src.colours
            Ve, Ce = self.with_cavity(V, C)
            if self.backend == "fast":
                img, mask = self._render_fast(Ve, Ce, cam, bg)
            else:
                r = render(Ve, self.triangles_ext, Ce, cam, background=bg, backend=self.backend)
                img, mask = r.image, r.mask
            if ss > 1:
                h = img.shape[0] // ss
                img = img.reshape(h, ss, h, ss, 3).mean((1, 3))
                mask = mask.reshape(h, ss, h, ss).mean((1, 3)) >= 0.5
            if src.space == "full":
                img = warp_affine(img, src.align, (self.size, self.size))
                mask = warp_affine(mask[..., None].astype(np.float32), src.align, (self.size, self.size))[..., 0] > 0.5
            out[i] = img
            masks[i] = mask
        return out, masks
