"""The per-process cache of the stages' and the demo world's tasks (models, fitters, maps).

A Dask task gets only paths and options (it must pickle small); the heavy objects it needs
(a ``MorphableModel``, a fitter, a correspondence map) are built once per worker process by
:func:`cached` and shared by every later task of that process, and by every stage that asks
for the same key.  Keys are tuples whose first entry names the kind (``"model"``,
``"calibration"``, ...); they must carry everything the value depends on (a content hash or
an mtime), so a changed file is a new key, never a stale value.

Decisions:

- One cache for the whole process (it was one dict per stage module): two stages of one
  process asking for ``("model", path, hash)`` share one model.
- Bounded per kind: at most ``keep`` values of a kind (default :data:`KEEP`) stay, the least
  recently used is dropped first.  A test process builds many worlds and runs many stages;
  an unbounded cache held every model it ever loaded.
- Thread-safe: a value is built once even when two threads of a worker ask for it together
  (one builds, the other waits for it); ``make`` may itself call :func:`cached` for another
  key (a fitter that needs the model).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

#: values kept per kind (the key's first entry) unless the caller says otherwise
KEEP = 4

_VALUES: "OrderedDict[tuple, Any]" = OrderedDict()
_BUILDING: dict = {}                 # key -> the lock its builder holds
_LOCK = threading.Lock()


def cached(key: tuple[Hashable, ...], make: Callable[[], Any], keep: int = KEEP) -> Any:
    """The value of ``key``, built by ``make()`` the first time this process asks for it.

    ``key[0]`` names the kind; at most ``keep`` values of that kind are kept (LRU).  An
    exception in ``make`` is raised to the caller and nothing is stored."""
    if not isinstance(key, tuple) or not key:
        raise TypeError("cache keys are non-empty tuples whose first entry names the kind")
    while True:
        with _LOCK:
            if key in _VALUES:
                _VALUES.move_to_end(key)
                return _VALUES[key]
            lock = _BUILDING.get(key)
            if lock is None:
                lock = _BUILDING[key] = threading.Lock()
                lock.acquire()
                break
        with lock:                   # another thread builds it: wait, then look again
            pass
    try:
        value = make()
        with _LOCK:
            _VALUES[key] = value
            same = [k for k in _VALUES if k[0] == key[0]]
            for k in same[:max(0, len(same) - max(1, int(keep)))]:
                del _VALUES[k]
        return value
    finally:
        with _LOCK:
            del _BUILDING[key]
        lock.release()


def clear() -> None:
    """Forget every cached value (tests)."""
    with _LOCK:
        _VALUES.clear()
