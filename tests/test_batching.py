"""Blocks of samples on the NumPy thread pool (hessarray/engine/batching.py)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hessarray as ha
from hessarray.engine.plan import balanced_chunk
from hessarray.tuning import MIN_SPLIT


def recording_model(names: list[str]) -> ha.Sequential:
    """``Σ x²`` through a user elementwise layer that records the thread it runs on."""

    def square(z):
        names.append(threading.current_thread().name)
        return z * z

    layer = ha.Elementwise(square, lambda z: 2.0 * z, lambda z: 2.0 + 0.0 * z)
    return ha.Sequential(layer, ha.Sum())


def test_serial_run_leaves_the_pool_usable(monkeypatch):
    names: list[str] = []
    model = recording_model(names)
    x = np.ones((8, 3))
    monkeypatch.setenv("HESSARRAY_THREADS", "1")
    serial = ha.hessian(model, x, chunk_size=2)
    assert set(names) == {threading.current_thread().name}  # blocks ran on the caller's thread
    names.clear()
    monkeypatch.setenv("HESSARRAY_THREADS", "2")
    pooled = ha.hessian(model, x, chunk_size=2)
    assert names and all(name.startswith("hessarray") for name in names), set(names)
    np.testing.assert_array_equal(serial, pooled)
    np.testing.assert_array_equal(pooled, np.broadcast_to(2.0 * np.eye(3), (8, 3, 3)))


def test_calls_from_a_model_function_stay_serial(monkeypatch):
    """A model whose layer calls hessarray again: the inner call runs on the pool thread."""
    monkeypatch.setenv("HESSARRAY_THREADS", "2")
    inner_names: list[str] = []
    inner = recording_model(inner_names)

    def f(z):
        ha.hessian(inner, z[:, :1] * 0.0 + 1.0, chunk_size=1)
        return z

    outer = ha.Sequential(ha.Elementwise(f, lambda z: 1.0 + 0.0 * z, lambda z: 0.0 * z), ha.Square(), ha.Sum())
    ha.hessian(outer, np.ones((4, 2)), chunk_size=1)
    assert inner_names and all(name.startswith("hessarray") for name in inner_names)


@pytest.mark.parametrize("batch", [1, 10, 63, 64, 129, 1000, 2000, 10_000, 10_001])
@pytest.mark.parametrize("chunk", [16, 100, 1024, 2048, 4096])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_balanced_chunk_splits_evenly_over_the_threads(batch, chunk, workers):
    size = balanced_chunk(batch, chunk, workers)
    blocks = [min(size, batch - start) for start in range(0, batch, size)]
    assert 1 <= size <= max(chunk, -(-batch // workers))
    if batch > chunk:
        assert len(blocks) > 1, "a batch larger than the block size is split"
    elif workers > 1 and batch >= MIN_SPLIT * workers:
        assert len(blocks) == workers, "a batch that fits in one block still uses every thread"
    if len(blocks) == 1:  # too few samples to be worth a second thread
        assert batch <= chunk and batch < MIN_SPLIT * workers or workers == 1
        return
    # Blocks handed out in turn: no thread gets half a block (or 5 %) more than another.
    loads = [sum(blocks[i::workers]) for i in range(workers)]
    assert max(loads) - min(loads) <= max(size // 2 + 1, 0.05 * batch / workers), (size, loads)


def test_plan_is_remembered_and_follows_the_thread_setting(monkeypatch):
    # (A user's activation: a built-in one would run NumPy's compiled executor, in tiles of its own)
    square = ha.Elementwise(lambda z: z * z, lambda z: 2 * z, lambda z: 2.0 + 0 * z)
    model = ha.Sequential(ha.Dense(np.ones((8, 3))), square, ha.Dense(np.ones((1, 8))), ha.Sum())
    x = np.ones((5000, 3))
    monkeypatch.setenv("HESSARRAY_THREADS", "2")
    first = ha.plan(model, x)
    assert ha.plan(model, x) is first, "the same call is planned once"
    assert first.workers == 2 and (-(-5000 // first.chunk_size)) % 2 == 0
    monkeypatch.setenv("HESSARRAY_THREADS", "1")
    assert ha.plan(model, x).workers == 1
    assert ha.plan(model, x.astype(np.float32)) is not first  # another dtype, another plan
    assert ha.plan(model, x, mode="reverse").mode == "reverse"


def test_run_shared_runs_on_the_caller_and_the_pool_at_once():
    """``run_shared(fn, n)``: n calls at the same time (a barrier of n passes), one on the
    caller's thread, BLAS at one thread in each; a nested call runs once, on its own thread."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from hessarray.engine import batching

    names, blas, lock = [], [], threading.Lock()
    barrier = threading.Barrier(3, timeout=30)

    def fn():
        with lock:
            names.append(threading.current_thread().name)
            blas.extend(lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas")
        barrier.wait()

    batching.run_shared(fn, 3)
    me = threading.current_thread().name
    assert len(names) == 3 and names.count(me) == 1
    assert all(name.startswith("hessarray") for name in names if name != me)
    assert blas and set(blas) == {1}

    inner: list[str] = []
    batching.run_shared(lambda: batching.run_shared(lambda: inner.append(threading.current_thread().name), 2), 2)
    assert len(inner) == 2 and len(set(inner)) == 2  # each outer call ran the inner one itself


def test_run_shared_waits_for_the_pool_when_the_caller_raises():
    from hessarray.engine import batching

    done = []

    def fn():
        if threading.current_thread() is threading.main_thread():
            raise ValueError("caller")
        threading.Event().wait(0.2)
        done.append(True)

    with pytest.raises(ValueError, match="caller"):
        batching.run_shared(fn, 2)
    assert done == [True]
    assert not getattr(batching._busy, "active", False)
