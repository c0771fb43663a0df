"""fitting.meshio: OBJ/PLY reading in the model's vertex order, textures, errors;
fitting.meshwrite: the OBJ writer."""
import re

import numpy as np
import pytest
from PIL import Image

from fitting.meshio import MeshError, find_meshes, load_correspondence, parse_mesh_key, read_mesh, sample_texture
from fitting.meshwrite import write_obj


def _quad():
    V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], float)
    T = np.array([[0, 1, 2], [0, 2, 3], [0, 1, 4]])
    return V, T


def test_obj_vertex_colours_roundtrip(tmp_path):
    V, T = _quad()
    C = np.linspace(0, 1, 15).reshape(5, 3)
    write_obj(tmp_path / "m.obj", V, T, colours=C)
    m = read_mesh(tmp_path / "m.obj")
    np.testing.assert_allclose(m.vertices, V, atol=1e-6)
    np.testing.assert_array_equal(m.triangles, T)
    np.testing.assert_allclose(m.colours, C, atol=1e-6)


def test_obj_texture_keeps_vertex_order_and_samples_colours(tmp_path):
    V, T = _quad()
    uv = np.array([[0.1, 0.9], [0.9, 0.9], [0.9, 0.1], [0.1, 0.1], [0.5, 0.5]])
    tex = np.zeros((20, 20, 3), np.uint8)
    tex[:10, :10] = [255, 0, 0]     # top-left (v high) red
    tex[:10, 10:] = [0, 255, 0]     # top-right green
    tex[10:, :10] = [0, 0, 255]     # bottom-left blue
    tex[10:, 10:] = [255, 255, 255]
    Image.fromarray(tex).save(tmp_path / "skin.png")
    write_obj(tmp_path / "m.obj", V, T, tcoords=uv, texture_name="skin.png")
    m = read_mesh(tmp_path / "m.obj")
    assert m.n_vertices == 5 and m.texture is not None
    np.testing.assert_allclose(m.colours[:4], [[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]], atol=1e-6)
    # the sampler against a direct pixel lookup at texel centres
    H, W = tex.shape[:2]
    centres = np.array([[(j + 0.5) / W, 1 - (i + 0.5) / H] for i in range(H) for j in range(W)])
    np.testing.assert_allclose(sample_texture(tex, centres), tex.reshape(-1, 3) / 255.0, atol=1e-6)


def test_obj_polygons_negative_indices_and_corner_formats(tmp_path):
    (tmp_path / "p.obj").write_text(
        "# quad + triangle\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\n"
        "f 1//1 2//1 3//1 4//1\nf -4 -3 -1\n")
    m = read_mesh(tmp_path / "p.obj")
    np.testing.assert_array_equal(m.triangles, [[0, 1, 2], [0, 2, 3], [0, 1, 3]])


def test_ply_through_trimesh_keeps_order(tmp_path):
    import trimesh

    V, T = _quad()
    cols = (np.arange(20).reshape(5, 4) * 10).astype(np.uint8)
    cols[:, 3] = 255
    trimesh.Trimesh(V, T, vertex_colors=cols, process=False).export(tmp_path / "m.ply")
    m = read_mesh(tmp_path / "m.ply")
    np.testing.assert_allclose(m.vertices, V)
    np.testing.assert_array_equal(m.triangles, T)
    np.testing.assert_allclose(m.colours, cols[:, :3] / 255.0, atol=1e-6)


@pytest.mark.parametrize("text,match", [("v 0 0 0\n", "no faces"), ("v 0 0 0\nf 1 2 3\n", "out of range"),
                                        ("f 1 2 3\n", "no vertices"), ("v 0 x 0\nf 1 1 1\n", "bad vertex")])
def test_bad_obj_is_a_mesh_error(tmp_path, text, match):
    (tmp_path / "b.obj").write_text(text)
    with pytest.raises(MeshError, match=match):
        read_mesh(tmp_path / "b.obj")
    with pytest.raises(MeshError, match="unsupported"):
        read_mesh(tmp_path / "b.stl")


def test_layout_keys_and_correspondence_files(tmp_path):
    for rel in ("id1/s0/a/000.obj", "id1/s1/000.ply", "id2/000.obj", "x.obj", "id1/notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("")
    assert find_meshes(tmp_path) == ["id1/s0/a/000.obj", "id1/s1/000.ply", "id2/000.obj", "x.obj"]
    assert parse_mesh_key("id1/s0/a/000.obj") == ("id1", "s0", "id1/s0/a/000")
    assert parse_mesh_key("id2/000.obj") == ("id2", "0", "id2/000")
    np.save(tmp_path / "m.npy", np.array([2, 0, 1]))
    (tmp_path / "m.txt").write_text("2, 0\n1\n")
    (tmp_path / "m.json").write_text("[2, 0, 1]")
    for f in ("m.npy", "m.txt", "m.json"):
        np.testing.assert_array_equal(load_correspondence(tmp_path / f), [2, 0, 1])
    from pipeline.config import ConfigError

    (tmp_path / "bad.txt").write_text("1 -2")
    with pytest.raises(ConfigError):
        load_correspondence(tmp_path / "bad.txt")


def test_format_rows_is_printf_fixed_point():
    """The compiled OBJ row formatter against Python's own ``%.{d}f`` (the reference), on
    values over eight orders of magnitude; a value that rounds to zero is written unsigned."""
    from fitting.meshwrite import format_rows

    rng = np.random.default_rng(0)
    v = rng.normal(size=(5000, 3)) * rng.choice([1e-3, 1, 100, 1e5], size=(5000, 1))
    dec = [6, 6, 4]
    got = format_rows("v ", v, dec).decode().splitlines()
    ref = ["v " + " ".join(f"{x:.{d}f}" for x, d in zip(row, dec)) for row in v]
    ref = [re.sub(r" -(0\.0+)(?= |$)", r" \1", r) for r in ref]
    assert got == ref
    assert format_rows("f ", np.array([[1, 2, 30]]), [0, 0, 0]) == b"f 1 2 30\n"
    for bad in (np.nan, np.inf, 1e13):
        with pytest.raises(ValueError):
            format_rows("v ", np.array([[0.0, bad, 0.0]]), dec)


def test_write_obj_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    """The OBJ is written under a unique temporary name and renamed (pipeline.atomic): a
    failing write leaves the old file and no temporary; a header line comes first."""
    import fitting.meshwrite as mw

    V, T = _quad()
    path = tmp_path / "m.obj"
    mw.write_obj(path, V, T, header="test mesh")
    old = path.read_bytes()
    assert old.startswith(b"# test mesh\nv 0.000000 0.000000 0.000000\n") and old.endswith(b"f 1 2 5\n")

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pipeline.atomic.commit", broken)      # the temporary is written, the rename fails
    with pytest.raises(RuntimeError):
        mw.write_obj(path, V + 1, T)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["m.obj"]
