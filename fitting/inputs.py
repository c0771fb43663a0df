"""Which photos to fit: a folder (recursive), an EmotioNet list file, or a plain list/CSV.

:func:`collect_inputs` returns an :class:`InputSet`: sorted, unique keys, and for each key
the local path and (EmotioNet lists) the 60 action-unit values.

EmotioNet lists (``dataFile_XXXX.txt``) are tab-separated rows ``URL, original URL,
AU1 ... AU60``.  Common download scripts save an image either as
``<root>/<host>/<url path>`` (wget ``-x``), ``<root>/<url path>`` or ``<root>/<last path
component>`` (flat); each URL is mapped to the first of these that exists (in that order),
and to the flat name when none does (the item is then rejected as unreadable).  The key is
that path relative to the root.  AU value 999 (EmotioNet's "not annotated") is stored as NaN.

Plain lists: one path per line, or CSV/TSV whose first column is a path; relative paths are
resolved against ``root`` (default: the list file's folder).  A first line whose first
field has no image suffix is taken as a header and skipped.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

import numpy as np

from fitting.images import IMAGE_SUFFIXES

N_AU = 60


class InputError(ValueError):
    """The input specification is unusable (missing folder/list, empty list)."""


@dataclass
class InputSet:
    """``keys`` sorted unique item ids; ``paths[key]`` local file; ``au[key]`` float32 [60]
    when the inputs came from an EmotioNet list; ``root`` the folder keys are relative to."""

    keys: list
    paths: dict
    root: str
    au: Optional[dict] = None
    kind: str = "folder"
    extra: dict = field(default_factory=dict)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def scan_folder(root: str | os.PathLike) -> InputSet:
    """Every file with an image suffix under ``root`` (recursive, hidden entries skipped)."""
    root = Path(root)
    paths = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if fn.startswith(".") or not is_image_name(fn):
                continue
            p = Path(dirpath) / fn
            paths[p.relative_to(root).as_posix()] = str(p)
    return InputSet(keys=sorted(paths), paths=paths, root=str(root), kind="folder")


def url_candidates(url: str) -> list[str]:
    """Relative local paths a downloaded URL may have, in the order tried (see module doc)."""
    u = urlparse(url.strip())
    path = unquote(u.path).lstrip("/")
    name = path.rsplit("/", 1)[-1] if path else ""
    out = []
    if u.netloc and path:
        out.append(f"{u.netloc}/{path}")
    if path:
        out.append(path)
    if name:
        out.append(name)
    seen, uniq = set(), []
    for c in out:
        if c and c not in seen and ".." not in c.split("/"):
            seen.add(c)
            uniq.append(c)
    return uniq


def _parse_au(fields: list[str]) -> np.ndarray:
    au = np.full(N_AU, np.nan, np.float32)
    for i, f in enumerate(fields[:N_AU]):
        try:
            v = float(f)
        except ValueError:
            continue
        au[i] = np.nan if v == 999 else v
    return au


def read_list(list_path: str | os.PathLike, root: str | os.PathLike | None = None) -> InputSet:
    """Read an EmotioNet ``dataFile`` list or a plain path list / CSV (see module doc)."""
    lp = Path(list_path)
    try:
        text = lp.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read image list {list_path}: {e.strerror}") from None
    base = Path(root) if root is not None else lp.parent
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"image list {list_path} is empty")
    first = lines[0].split("\t")[0].strip()
    emotionet = first.lower().startswith(("http://", "https://")) and "\t" in lines[0]
    paths, aus = {}, {}
    if emotionet:
        for ln in lines:
            fields = [f.strip() for f in ln.split("\t")]
            cands = url_candidates(fields[0])
            if not cands:
                continue
            key = next((c for c in cands if (base / c).is_file()), cands[-1])
            if key in paths:
                continue
            paths[key] = str(base / key)
            aus[key] = _parse_au(fields[2:])
        return InputSet(keys=sorted(paths), paths=paths, root=str(base), au=aus, kind="emotionet")
    delim = "\t" if "\t" in lines[0] else ","
    rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delim))
    if rows and rows[0] and not is_image_name(rows[0][0].strip()):
        rows = rows[1:]
    for r in rows:
        if not r or not r[0].strip():
            continue
        raw = r[0].strip()
        p = Path(raw) if os.path.isabs(raw) else base / raw
        try:
            key = p.relative_to(base).as_posix()
        except ValueError:
            key = p.as_posix()
        paths.setdefault(key, str(p))
    if not paths:
        raise InputError(f"image list {list_path} names no files")
    return InputSet(keys=sorted(paths), paths=paths, root=str(base), kind="list")


def collect_inputs(images: str | os.PathLike, root: str | os.PathLike | None = None) -> InputSet:
    """``images`` is a folder (scanned recursively) or a list file (with optional ``root``)."""
    p = Path(images)
    if p.is_dir():
        if root is not None:
            raise InputError("--root is only used with a list file given as --images")
        return scan_folder(p)
    if p.is_file():
        if root is not None and not Path(root).is_dir():
            raise InputError(f"--root folder not found: {root}")
        return read_list(p, root)
    raise InputError(f"images not found: {images} (expected a folder or a list file)")


# EmotioNet AUs -> the seven discrete labels (index into fitting.model.EXPRESSION_NAMES:
# neutral, anger, disgust, fear, happiness, sadness, surprise); prototypes after Du et al.
# (PNAS 2014), the AU definitions EmotioNet's basic categories were derived from.
_AU_PROTOTYPES = {
    1: (4, 7, 24),          # anger
    2: (9, 10, 17),         # disgust
    3: (1, 4, 20, 25),      # fear
    4: (12, 25),            # happiness
    5: (4, 15),             # sadness
    6: (1, 2, 25, 26),      # surprise
}


def label_from_au(au: np.ndarray) -> int:
    """Discrete expression label from 60 AU values (1 present, 0 absent, NaN unknown):
    the single prototype whose AUs are all present; 0 (neutral) when every annotated AU is
    absent; -1 when ambiguous or unknown."""
    au = np.asarray(au, np.float64)
    known = np.isfinite(au)
    if not known.any():
        return -1
    present = lambda i: i - 1 < len(au) and known[i - 1] and au[i - 1] > 0.5  # noqa: E731
    hits = [lab for lab, aus in _AU_PROTOTYPES.items() if all(present(a) for a in aus)]
    if len(hits) == 1:
        return hits[0]
    if not hits and not np.any(au[known] > 0.5):
        return 0
    return -1
