"""pipeline.cache: one per-process cache for the stages' and the demo world's tasks."""
import threading
import time

import pytest

from pipeline import cache


@pytest.fixture(autouse=True)
def _fresh():
    cache.clear()
    yield
    cache.clear()


def test_built_once_and_shared():
    calls = []
    a = cache.cached(("model", "m.h5", "h1"), lambda: calls.append(1) or object())
    b = cache.cached(("model", "m.h5", "h1"), lambda: calls.append(1) or object())
    assert a is b and calls == [1]
    c = cache.cached(("model", "m.h5", "h2"), object)           # another hash: another value
    assert c is not a


def test_keep_per_kind_least_recently_used_first():
    made = []

    def make(k):
        return lambda: made.append(k) or k

    for k in range(3):
        cache.cached(("a", k), make(k), keep=2)
    cache.cached(("b", 0), make("b"), keep=2)                 # another kind does not evict "a"
    assert made == [0, 1, 2, "b"]
    cache.cached(("a", 1), make("again-1"), keep=2)           # kept (one of the last two)
    cache.cached(("a", 0), make("again-0"), keep=2)           # dropped when 2 came in: rebuilt
    cache.cached(("b", 0), make("again-b"), keep=2)
    assert made == [0, 1, 2, "b", "again-0"]
    cache.cached(("a", 2), make("again-2"), keep=2)           # dropped when 0 came back (1 was used later)
    assert made[-1] == "again-2"


def test_failed_build_is_not_stored():
    def boom():
        raise OSError("unreadable")

    with pytest.raises(OSError):
        cache.cached(("model", "bad"), boom)
    assert cache.cached(("model", "bad"), lambda: 7) == 7


def test_nested_builds_and_threads_build_once():
    calls = {"model": 0, "fitter": 0}

    def model():
        calls["model"] += 1
        time.sleep(0.05)
        return "M"

    def fitter():
        calls["fitter"] += 1
        return ("F", cache.cached(("model", 1), model))          # a value that needs another

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.cached(("fitter", 1), fitter))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert out == [("F", "M")] * 8 and calls == {"model": 1, "fitter": 1}


def test_keys_must_be_tuples():
    with pytest.raises(TypeError):
        cache.cached("model", object)
