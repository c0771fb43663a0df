"""HDF5 shards of schema ``slidergan-shard/1`` (docs/INTERFACES.md) and their lazy reader.

Writer: :func:`write_shard` writes one chunk of row-aligned datasets to a temporary name
and renames it.  Outputs are byte-identical for identical rows: ``track_times=False`` on
every dataset, a fixed HDF5 file-format version (``libver=("v110", "v110")``), datasets
and attributes written in sorted order, no timestamps anywhere.  Images [n,H,W,C] (any
4+-D array, or 3-D with rows of >= 4 KiB) get one row per HDF5 chunk, so random access
reads one image; other columns are contiguous.  Strings are UTF-8 variable-length.  Per-chunk rejects are kept
inside the shard (hidden dataset ``_rejects``, one JSON object per row), so a shard and
its rejects are committed by the same rename and can never disagree after a kill.

Reader: :class:`ShardSet` trusts only shards listed in ``_stage.json``.  h5py handles are
opened lazily and re-opened when ``os.getpid()`` changes, so a ShardSet made in a parent
process is safe in forked children and torch DataLoader workers; it also pickles without
its handles.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np

from pipeline.atomic import atomic_write_with
from pipeline.config import ConfigError

SCHEMA = "slidergan-shard/1"
STAGE_FILE = "_stage.json"
REJECTS_FILE = "rejects.jsonl"
REJECTS_DATASET = "_rejects"
LIBVER = ("v110", "v110")
STR_DTYPE = h5py.string_dtype("utf-8")
# images [n,H,W,C] (and other 4+-D data, or 3-D data with rows this big, e.g. masks) get
# one HDF5 chunk per row; small 3-D rows (landmarks [68,2], affines [2,3]) stay contiguous
# so whole-column reads stay one I/O
ROW_CHUNK_MIN_BYTES = 4096


class ShardError(ConfigError):
    """A stage folder or shard is missing, incomplete or does not match its _stage.json."""


def open_shard(path: str | os.PathLike) -> h5py.File:
    """Open a shard read-only.  HDF5 file locking is off: a shard never changes once renamed
    into place, and HDF5's own locks fail on some network file systems (NFS, Lustre)."""
    return h5py.File(path, "r", locking=False)


def shard_name(chunk: int) -> str:
    return f"shard-{chunk:05d}.h5"


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _is_str_column(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype.kind in ("U", "S", "O")
    return isinstance(value, (list, tuple)) and (len(value) == 0 or isinstance(value[0], str))


def normalise_rows(rows: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], int]:
    """Check row alignment; return ({name: array}, n).  Strings become object arrays of str.

    Raises ValueError naming the offending dataset."""
    out: dict[str, np.ndarray] = {}
    n = None
    for name in sorted(rows):
        if not isinstance(name, str) or not name or name.startswith("_") or "/" in name:
            raise ValueError(f"bad dataset name {name!r} (no leading '_' or '/')")
        value = rows[name]
        if _is_str_column(value):
            arr = np.empty(len(value), dtype=object)
            for i, v in enumerate(value):
                arr[i] = v.decode("utf-8") if isinstance(v, bytes) else str(v)
        else:
            arr = np.ascontiguousarray(np.asarray(value))
            if arr.ndim == 0:
                raise ValueError(f"dataset {name!r} must have a first dimension n")
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"dataset {name!r}: unsupported dtype {arr.dtype}")
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"dataset {name!r} has {len(arr)} rows, expected {n}")
        out[name] = arr
    return out, (n or 0)


def write_shard(path: str | os.PathLike, rows: Mapping[str, Any], *, stage: str, chunk: int,
                params_hash: str, model_hash: str | None = None, rejects: Sequence[Mapping] = (),
                attrs: Mapping[str, Any] | None = None, compression: str | None = None) -> dict:
    """Write one shard atomically; return ``{"file", "chunk", "n", "sha256", "n_rejects"}``.

    rows: {dataset: array [n, ...] or list[str] of length n} (all the same n; may be empty).
    rejects: [{"key", "reason", "detail"}] of this chunk.  attrs: extra file attributes
    (str/int/float).  compression: None or "lzf" (images only)."""
    if compression not in (None, "lzf"):
        raise ValueError(f"compression must be None or 'lzf', got {compression!r}")
    data, n = normalise_rows(rows)
    path = Path(path)
    file_attrs: dict[str, Any] = dict(attrs or {})
    file_attrs.update(schema=SCHEMA, stage=stage, chunk=int(chunk), params_hash=params_hash,
                      model_hash=model_hash or "", n=int(n))
    reject_lines = [json.dumps(_clean_reject(r), sort_keys=True, ensure_ascii=False) for r in rejects]

    def _write(tmp: Path) -> None:
        with h5py.File(tmp, "w", libver=LIBVER, track_order=False, locking=False) as f:
            for k in sorted(file_attrs):
                f.attrs[k] = file_attrs[k]
            for name, arr in data.items():
                if arr.dtype == object:
                    f.create_dataset(name, shape=arr.shape, dtype=STR_DTYPE, data=arr, track_times=False)
                elif n > 0 and (arr.ndim >= 4 or (arr.ndim == 3 and arr[0].nbytes >= ROW_CHUNK_MIN_BYTES)):
                    f.create_dataset(name, data=arr, chunks=(1,) + arr.shape[1:],
                                     compression=compression, track_times=False)
                else:
                    f.create_dataset(name, data=arr, track_times=False)
            lines = np.empty(len(reject_lines), dtype=object)
            lines[:] = reject_lines
            f.create_dataset(REJECTS_DATASET, shape=lines.shape, dtype=STR_DTYPE, data=lines,
                             track_times=False)

    atomic_write_with(path, _write)
    return {"file": path.name, "chunk": int(chunk), "n": int(n), "sha256": sha256_file(path),
            "n_rejects": len(reject_lines)}


def _clean_reject(r: Mapping) -> dict:
    if "key" not in r or "reason" not in r:
        raise ValueError(f"a reject needs 'key' and 'reason', got {dict(r)!r}")
    return {"key": str(r["key"]), "reason": str(r["reason"]), "detail": str(r.get("detail", ""))}


def read_shard_attrs(path: str | os.PathLike) -> dict | None:
    """File attributes of a shard, or None if it cannot be opened / is not a shard."""
    try:
        with open_shard(path) as f:
            attrs = {k: _attr_value(v) for k, v in f.attrs.items()}
    except (OSError, ValueError, KeyError):
        return None
    return attrs if attrs.get("schema") == SCHEMA else None


def read_shard_rejects(path: str | os.PathLike) -> list[dict]:
    with open_shard(path) as f:
        if REJECTS_DATASET not in f:
            return []
        return [json.loads(s) for s in f[REJECTS_DATASET].asstr()[()]]


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_stage_json(stage_dir: str | os.PathLike) -> dict:
    p = Path(stage_dir) / STAGE_FILE
    if not Path(stage_dir).is_dir():
        raise ShardError(f"stage folder not found: {stage_dir}")
    if not p.is_file():
        raise ShardError(f"{stage_dir} is not a finished stage (no {STAGE_FILE}); run the stage first")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise ShardError(f"{p}: unreadable ({e})") from None


class ShardSet:
    """Lazy, process-safe reader over a finished stage folder.

    ``len(ds)`` rows; ``ds.datasets`` {name: (dtype, shape [N, ...])}; ``ds.attrs`` stage
    metadata (name, params, params_hash, model_hash, code_version and the stage's attrs);
    ``ds.read(name)`` a whole column [N, ...]; ``ds.read(name, idx)`` rows at int / slice /
    int array (any order, repeats) / bool mask [N]; ``ds.row(i)`` {name: value}; ``ds.keys()`` the ``key`` column as list[str];
    ``ds.rejects()`` the stage's rejects.  Strings come back as ``str`` (object arrays).
    """

    def __init__(self, stage_dir: str | os.PathLike, allow_incomplete: bool = False):
        self.dir = Path(stage_dir)
        meta = read_stage_json(self.dir)
        if not meta.get("complete", False) and not allow_incomplete and meta.get("too_many_rejects"):
            raise ShardError(f"{self.dir} is incomplete: {meta['too_many_rejects']}; see its rejects.jsonl")
        if not meta.get("complete", False) and not allow_incomplete:
            failed = ", ".join(str(c) for c in sorted(map(int, meta.get("failed", {}))))
            raise ShardError(f"{self.dir} is incomplete (failed/missing chunks: {failed or '?'}); "
                             "re-run the stage")
        self.meta = meta
        self.shards = [s for s in meta.get("shards", [])]
        self.files = [self.dir / s["file"] for s in self.shards]
        counts = np.array([int(s["n"]) for s in self.shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._datasets = {k: (np.dtype(v["dtype"]) if v["dtype"] != "str" else "str",
                              tuple(v["shape"])) for k, v in meta.get("datasets", {}).items()}
        self._handles: dict[int, h5py.File] = {}
        self._dsets: dict[tuple[int, str], Any] = {}
        self._pid = os.getpid()

    # -- metadata -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def datasets(self) -> dict[str, tuple]:
        """{name: (dtype or "str", shape [N, ...])} over the whole stage."""
        return {k: (dt, (len(self),) + shape) for k, (dt, shape) in self._datasets.items()}

    @property
    def attrs(self) -> dict:
        out = dict(self.meta.get("attrs", {}))
        for k in ("name", "params", "params_hash", "model_hash", "code_version"):
            out[k] = self.meta.get(k)
        out["stage"] = self.meta.get("name")
        return out

    @property
    def name(self) -> str:
        return self.meta.get("name")

    # -- process-safe handles -------------------------------------------------------------
    def _file(self, s: int) -> h5py.File:
        pid = os.getpid()
        if pid != self._pid:            # forked: never reuse the parent's HDF5 handles
            self._handles = {}
            self._dsets = {}
            self._pid = pid
        f = self._handles.get(s)
        if f is None:
            try:
                f = open_shard(self.files[s])
            except OSError as e:
                raise ShardError(f"cannot open {self.files[s]}: {e}") from None
            listed = self.shards[s]
            if (f.attrs.get("params_hash") != self.meta.get("params_hash")
                    or int(f.attrs.get("n", -1)) != int(listed["n"])):
                f.close()
                raise ShardError(f"{self.files[s]} does not match {STAGE_FILE}; re-run the stage")
            self._handles[s] = f
        return f

    def close(self) -> None:
        if self._pid == os.getpid():
            for f in self._handles.values():
                try:
                    f.close()
                except Exception:  # noqa: BLE001 — closing a dead handle
                    pass
        self._handles = {}
        self._dsets = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}
        state["_dsets"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    # -- reading --------------------------------------------------------------------------
    def _check(self, name: str) -> None:
        if name not in self._datasets:
            raise KeyError(f"{self.dir}: no dataset {name!r} (has {', '.join(sorted(self._datasets))})")

    def _read_local(self, s: int, name: str, local: np.ndarray | slice | int) -> np.ndarray:
        d = self._dsets.get((s, name)) if self._pid == os.getpid() else None
        if d is None:
            d = self._file(s)[name]
            if self._datasets[name][0] == "str":
                d = d.asstr()
            self._dsets[(s, name)] = d
        return np.asarray(d[local])

    def _empty(self, name: str, n: int = 0) -> np.ndarray:
        dt, shape = self._datasets[name]
        return np.empty((n,) + shape, dtype=object if dt == "str" else dt)

    def read(self, name: str, idx: Any = None) -> np.ndarray:
        """Column ``name``: all rows [N, ...] (idx None), one row (int) or rows [len(idx), ...]."""
        self._check(name)
        N = len(self)
        if idx is None:
            parts = [self._read_local(s, name, slice(None)) for s in range(len(self.files))
                     if self.shards[s]["n"] > 0]
            return np.concatenate(parts) if parts else self._empty(name)
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (N if idx < 0 else 0)
            if not 0 <= i < N:
                raise IndexError(f"row {idx} out of range for {N} rows")
            s = int(np.searchsorted(self.offsets, i, side="right") - 1)
            return self._read_local(s, name, int(i - self.offsets[s]))
        if isinstance(idx, slice):
            idx = np.arange(N)[idx]
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (N,):
                raise IndexError(f"boolean mask of shape {idx.shape} for {N} rows")
            idx = np.nonzero(idx)[0]
        idx = idx.astype(np.int64).reshape(-1)
        idx = np.where(idx < 0, idx + N, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= N):
            raise IndexError(f"rows out of range for {N} rows")
        out = self._empty(name, len(idx))
        shard_of = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(shard_of):
            pos = np.nonzero(shard_of == s)[0]
            local = idx[pos] - self.offsets[s]
            uniq, inverse = np.unique(local, return_inverse=True)   # h5py wants increasing
            vals = self._read_local(int(s), name, uniq if len(uniq) > 1 else slice(int(uniq[0]), int(uniq[0]) + 1))
            out[pos] = vals[inverse]
        return out

    def row(self, i: int) -> dict[str, Any]:
        return {name: self.read(name, i) for name in self._datasets}

    def keys(self) -> list[str]:
        return [str(k) for k in self.read("key")] if "key" in self._datasets else []

    def rejects(self) -> list[dict]:
        p = self.dir / REJECTS_FILE
        if not p.is_file():
            return []
        return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]

    def __repr__(self) -> str:
        return f"ShardSet({str(self.dir)!r}, stage={self.name!r}, rows={len(self)}, shards={len(self.files)})"


def describe_datasets(path: str | os.PathLike) -> dict[str, dict]:
    """{name: {"dtype", "shape" (per row)}} of a shard's visible datasets."""
    out = {}
    with open_shard(path) as f:
        for name in sorted(f):
            if name.startswith("_"):
                continue
            d = f[name]
            dt = "str" if h5py.check_string_dtype(d.dtype) is not None else np.dtype(d.dtype).str
            out[name] = {"dtype": dt, "shape": list(d.shape[1:])}
    return out
