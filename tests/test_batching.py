"""Blocks of samples on the NumPy thread pool (hessarray/engine/batching.py)."""

from __future__ import annotations

import threading

import numpy as np

import hessarray as ha


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
