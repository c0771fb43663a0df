"""Input collection: folders, EmotioNet lists (URL -> local file mapping, AUs), plain lists."""
from __future__ import annotations

import numpy as np
import pytest

from fitting.inputs import (InputError, collect_inputs, label_from_au, read_list, scan_folder,
                            url_candidates)


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")


def test_folder_scan_is_recursive_sorted_and_filters_suffixes(tmp_path):
    for n in ("b/2.PNG", "a.jpg", "b/1.webp", "c/d/e.bmp", "notes.txt", "x.pts", ".hidden/h.jpg", "a.jpeg"):
        _touch(tmp_path / n)
    s = scan_folder(tmp_path)
    assert s.keys == ["a.jpeg", "a.jpg", "b/1.webp", "b/2.PNG", "c/d/e.bmp"]
    assert s.paths["c/d/e.bmp"] == str(tmp_path / "c/d/e.bmp") and s.au is None


def test_url_candidates_order():
    assert url_candidates("http://host.com/x/y%20z.jpg") == ["host.com/x/y z.jpg", "x/y z.jpg", "y z.jpg"]
    assert url_candidates("https://h/../../etc/passwd") == ["passwd"]


def test_emotionet_list_maps_urls_and_keeps_aus(tmp_path):
    root = tmp_path / "dl"
    _touch(root / "img.com/faces/a.jpg")        # wget -x layout
    _touch(root / "faces/b.jpg")                # url path layout
    _touch(root / "c.jpg")                      # flat layout
    au = lambda v: "\t".join(str(x) for x in v)  # noqa: E731
    rows = [
        "http://img.com/faces/a.jpg\thttp://orig/a\t" + au([1, 0] + [999] * 58),
        "http://img.com/faces/b.jpg\thttp://orig/b\t" + au([0] * 60),
        "http://other.org/p/c.jpg\thttp://orig/c\t" + au([0] * 3 + [1] + [0] * 10 + [1] + [0] * 45),
        "http://other.org/p/missing.jpg\thttp://orig/m\t" + au([0] * 60),
        "http://img.com/faces/a.jpg\tdup\t" + au([1] * 60),
    ]
    lst = tmp_path / "dataFile_1001.txt"
    lst.write_text("\n".join(rows) + "\n")
    s = collect_inputs(lst, root)
    assert s.kind == "emotionet"
    assert s.keys == ["c.jpg", "faces/b.jpg", "img.com/faces/a.jpg", "missing.jpg"]
    assert s.paths["faces/b.jpg"] == str(root / "faces/b.jpg")
    a = s.au["img.com/faces/a.jpg"]
    assert a.shape == (60,) and a[0] == 1 and a[1] == 0 and np.isnan(a[2])     # first row kept, 999 -> NaN
    assert label_from_au(s.au["c.jpg"]) == 5                                   # AU4 + AU15: sadness
    assert label_from_au(s.au["faces/b.jpg"]) == 0                             # no AU: neutral


def test_label_from_au_prototypes():
    def au(*on):
        a = np.zeros(60, np.float32)
        for i in on:
            a[i - 1] = 1
        return a
    assert label_from_au(au(6, 12, 25)) == 4          # happiness
    assert label_from_au(au(1, 2, 25, 26)) == 6       # surprise
    assert label_from_au(au(1, 2, 4, 20, 25, 26)) == -1   # fear and surprise both: ambiguous
    assert label_from_au(np.full(60, np.nan)) == -1


def test_plain_list_and_csv(tmp_path):
    _touch(tmp_path / "imgs/a.jpg")
    _touch(tmp_path / "imgs/b.png")
    (tmp_path / "list.txt").write_text("imgs/b.png\nimgs/a.jpg\n\n# comment\nimgs/a.jpg\n")
    s = read_list(tmp_path / "list.txt")
    assert s.keys == ["imgs/a.jpg", "imgs/b.png"] and s.kind == "list"
    (tmp_path / "l.csv").write_text("path,label\nimgs/a.jpg,3\n" + f"{tmp_path / 'imgs/b.png'},1\n")
    s = read_list(tmp_path / "l.csv")
    assert s.keys == ["imgs/a.jpg", "imgs/b.png"]
    s = read_list(tmp_path / "list.txt", root=tmp_path / "imgs")
    assert s.paths["imgs/a.jpg"] == str(tmp_path / "imgs/imgs/a.jpg")


def test_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        collect_inputs(tmp_path / "nope")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(InputError, match="empty"):
        collect_inputs(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="--root"):
        collect_inputs(tmp_path, root=tmp_path)
