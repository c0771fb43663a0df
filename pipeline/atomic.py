"""Atomic file writes: write to a unique temporary name in the same folder, fsync, rename.

A reader (or a re-run after ``kill -9``) therefore sees either the old file or the complete
new one, never a half-written file under the final name.  Temporary names start with a dot
and contain ``.tmp-`` so :func:`remove_stale_temps` can clean up after a killed run.
"""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any, Callable

TMP_MARK = ".tmp-"


def temp_path(path: str | os.PathLike) -> Path:
    """A unique temporary sibling of ``path`` (same folder, so ``os.replace`` is atomic)."""
    p = Path(path)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return p.with_name(f".{p.name}{TMP_MARK}{tag}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """fsync ``tmp`` and rename it over ``path`` (atomic on POSIX)."""
    tmp, path = Path(tmp), Path(path)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        commit(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Deterministic JSON (sorted keys, 2-space indent, trailing newline), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``folder`` by killed writers; return what was removed.

    Call only while holding the folder's lock (see :mod:`pipeline.lock`)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and TMP_MARK in p.name and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed
