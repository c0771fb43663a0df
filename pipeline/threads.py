"""Thread limits for per-item numeric work."""
from __future__ import annotations


def one_blas_thread():
    """A context with one BLAS thread.  The per-photo / per-mesh matrix products of the
    stages are small, and an idle OpenBLAS thread spin-waits, burning a second core for
    nothing: measured, the same wall time at half the CPU time when one worker runs, and a
    2.6x slower photometric refinement (fitting/photometric.py) when two workers share two
    cores.  Results do not depend on it (tests/warps: thread-count independence)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        import contextlib

        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")
