"""Cameras, rasteriser backends (numba fast path + pyrender), SH lighting, texture sampling
and compositing on plain arrays (vertices, triangles, colours, camera) — no 3DMM knowledge.

Public API (docs/INTERFACES.md, docs/render.md)::

    render.render(vertices, triangles, colours, camera, background=(H, W) | image,
                  light=None | [9] | [9, 3], backend="fast" | "pyrender") -> RenderResult
    render.visible_vertices(vertices, triangles, camera, size) -> bool [N]
    render.sample_image(image, uv) -> [N, C];  render.sample_vertex_colours(...)
    render.camera.project / project_torch / make_camera
"""
from render.camera import make_camera, project, project_torch  # noqa: F401
from render.core import (RenderResult, render, sample_image, sample_vertex_colours,  # noqa: F401
                         visible_vertices)
from render.lighting import AMBIENT, random_light, sh_basis, vertex_normals  # noqa: F401
