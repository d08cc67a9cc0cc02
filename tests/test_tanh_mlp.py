"""The fused tanh-MLP forward mode (NumPy, numba) against the engine's portable passes.

Everything else in the suite that builds a ``Dense, Tanh, …, Dense`` model on NumPy runs it
too; here it is compared with the portable passes directly, over depths, widths, inputs,
dtypes and batches that straddle the tile size, and checked to stay out of the way where it
does not apply.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hessarray as ha
from hessarray import tuning
from hessarray.engine import tanh_mlp

pytest.importorskip("numba")
pytest.importorskip("scipy")

TOL = {np.float64: 1e-12, np.float32: 2e-4}


def mlp(d, widths, dtype, out=1, bias=True, total=False, seed=0):
    """``Dense d→w₀, Tanh, …, Dense → out`` (then ``Sum`` if ``total``)."""
    rng = np.random.default_rng(seed)
    dims = [d, *widths]
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(dtype)
        layers += [ha.Dense(w, (0.3 * rng.standard_normal(b)).astype(dtype) if bias else None), ha.Tanh()]
    w = (rng.standard_normal((out, dims[-1])) / np.sqrt(dims[-1])).astype(dtype)
    layers.append(ha.Dense(w, (0.3 * rng.standard_normal(out)).astype(dtype) if bias else None))
    if total:
        layers.append(ha.Sum())
    return ha.Sequential(*layers)


def _close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype
    scale = max(float(np.max(np.abs(want))), 1.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale)


CASES = [  # (d, widths, out, total, bias)
    (1, [8], 1, False, True),  # one hidden layer
    (1, [9, 11, 7], 1, False, True),  # one direction through several layers (the k ≤ 2 loops)
    (2, [5, 13, 6], 1, False, False),  # two directions, unequal widths, no bias
    (2, [64, 64, 64, 64], 1, True, True),  # the PINN-like benchmark's network
    (3, [5, 7, 4], 1, False, False),  # unequal widths, no bias
    (4, [16, 9], 3, True, True),  # several outputs summed
    (6, [6, 33, 6], 1, False, True),  # the input as wide as the first layer
    (tuning.MAX_K, [30, 30], 1, False, True),  # the most directions the loop takes
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("batch", [1, tuning.TILE - 1, tuning.TILE, 2 * tuning.TILE + 5])
@pytest.mark.parametrize(("d", "widths", "out", "total", "bias"), CASES)
def test_matches_portable_passes(matches_portable, d, widths, out, total, bias, batch, dtype):
    model = mlp(d, widths, dtype, out=out, bias=bias, total=total)
    x = np.random.default_rng(1).standard_normal((batch, d)).astype(dtype)
    matches_portable(tanh_mlp.tanh_mlp_derivatives, model, x, TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_public_calls_agree_with_and_without_it(portable, dtype):
    """Through the public API, over several blocks on the worker threads."""
    model = mlp(2, [24, 24, 24], dtype, total=True)
    x = np.random.default_rng(2).standard_normal((700, 2)).astype(dtype)
    calls = {
        "derivatives": lambda: tuple(ha.derivatives(model, x, chunk_size=150)),
        "forward": lambda: tuple(ha.derivatives(model, x, mode="forward")),
        "hessian": lambda: (ha.hessian(model, x, chunk_size=100),),
        "laplacian": lambda: (ha.laplacian(model, x, chunk_size=100),),
        "diagonal": lambda: (ha.hessian_diagonal(model, x),),
    }
    for call in calls.values():
        got = call()
        with portable():
            want = call()
        for g, w in zip(got, want):
            _close(np.asarray(g), np.asarray(w), dtype)


def test_against_finite_differences():
    """Central differences of the gradient, which ``jacobian`` computes without this path."""
    model = mlp(3, [10, 12], np.float64)
    x = np.random.default_rng(3).standard_normal((5, 3))
    h = tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full")[2][:, 0]
    eps = 1e-5
    for i in range(3):
        e = np.zeros(3)
        e[i] = eps
        up = np.reshape(ha.jacobian(model, x + e), (5, 3))
        down = np.reshape(ha.jacobian(model, x - e), (5, 3))
        np.testing.assert_allclose(h[:, i, :], (up - down) / (2 * eps), rtol=1e-7, atol=1e-8)


def test_keeps_nan_and_inf(portable):
    model = mlp(2, [8, 8], np.float64)
    x = np.array([[np.nan, 0.5], [np.inf, 1.0], [0.1, 0.2]])
    got = tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full")
    with portable():
        want = ha.engine.forward_mode(model.layers, x, True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14, equal_nan=True)


def _unmatched():
    rng = np.random.default_rng(4)

    def dense(o, i, dtype=np.float64):
        return ha.Dense(rng.standard_normal((o, i)).astype(dtype), rng.standard_normal(o).astype(dtype))

    return {
        "input wider than the first layer": (ha.Sequential(dense(2, 3), ha.Tanh(), dense(1, 2)), 3),
        "more directions than the loop takes": (
            ha.Sequential(dense(40, tuning.MAX_K + 1), ha.Tanh(), dense(1, 40)),
            tuning.MAX_K + 1,
        ),
        "several outputs, no Sum": (ha.Sequential(dense(4, 2), ha.Tanh(), dense(2, 4)), 2),
        "another activation": (ha.Sequential(dense(4, 2), ha.Sigmoid(), dense(1, 4)), 2),
        "two dense layers in a row": (ha.Sequential(dense(4, 2), dense(4, 4), ha.Tanh(), dense(1, 4)), 2),
        "no output layer": (ha.Sequential(dense(4, 2), ha.Tanh()), 2),
        "a loss at the end": (ha.Sequential(dense(4, 2), ha.Tanh(), dense(1, 4), ha.Square()), 2),
        "float32 weights, float64 input": (ha.Sequential(dense(4, 2, np.float32), ha.Tanh(), dense(1, 4)), 2),
        "a residual block": (
            ha.Sequential(dense(4, 2), ha.Tanh(), ha.Residual(dense(4, 4), ha.Tanh()), dense(1, 4)),
            2,
        ),
    }


@pytest.mark.parametrize("case", list(_unmatched()))
def test_falls_back_where_it_does_not_apply(case):
    model, d = _unmatched()[case]
    x = np.random.default_rng(5).standard_normal((6, d))
    assert tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full") is None
    out = ha.derivatives(model, x, mode="forward")  # the portable passes still answer
    assert np.asarray(out.hessian).shape[0] == 6


def test_falls_back_for_other_inputs(portable):
    model = mlp(2, [8], np.float64)
    x = np.random.default_rng(6).standard_normal((4, 2))
    assert tanh_mlp.tanh_mlp_derivatives(model.layers, x[:0], "full") is None  # no samples
    assert tanh_mlp.tanh_mlp_derivatives(model.layers, x.astype(np.float32), "full") is None
    assert tanh_mlp.tanh_mlp_derivatives(model.layers, x.tolist(), "full") is None
    with portable():
        assert tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full") is None  # switched off


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_tanh_within_two_ulp_of_exact(dtype):
    """The kernel's own tanh (vectorizable, no bit casts) against mpmath, and NumPy's specials."""
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(7)
    tiny = -300 if dtype == np.float64 else -44
    x = np.concatenate(
        [
            rng.uniform(-25, 25, 1500),
            rng.uniform(-1, 1, 1000),
            np.sign(rng.standard_normal(1000)) * 10.0 ** rng.uniform(tiny, 1.5, 1000),
            [0.17, 0.18, 0.34, 0.35, 9.0, 10.0, 19.0, 20.0, 21.0],  # range-reduction and clamp edges
        ]
    ).astype(dtype)
    got = x.reshape(1, -1).copy()
    tanh_mlp.tanh_rows(got, None)
    exact = np.array([float(mpmath.tanh(mpmath.mpf(float(v)))) for v in x]).astype(dtype)
    nonzero = exact != 0
    ulps = np.abs(got[0][nonzero].astype(np.float64) - exact[nonzero]) / np.spacing(np.abs(exact[nonzero]))
    assert ulps.max() <= 2
    values = [[0.0, -0.0, np.inf, -np.inf, np.nan, 40.0, -40.0]]
    special = np.array(values, dtype)
    tanh_mlp.tanh_rows(special, None)
    np.testing.assert_array_equal(special, np.tanh(np.array(values, dtype)))
    assert np.signbit(special[0, 1])
    biased = np.zeros((2, 3), dtype)
    tanh_mlp.tanh_rows(biased, np.array([0.5, -1.0, 2.0], dtype))  # z ← tanh(z + bias)
    np.testing.assert_allclose(biased, np.tanh(np.array([[0.5, -1.0, 2.0]] * 2, dtype)), rtol=4 * np.finfo(dtype).eps)


def test_serial_calls_limit_blas_threads_for_big_tiles(monkeypatch):
    """OpenBLAS threads a tile's product from M·N·K > 2¹⁸ on, which costs more than it gains:
    a serial call runs the kernel under the one-thread limit, a call inside parallel blocks
    (already limited) and a call on small tiles do not take it again."""
    from contextlib import contextmanager

    from hessarray.engine import batching

    entered = []

    @contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(batching, "_blas_single_thread", recording)
    big = mlp(4, [128, 128], np.float64)  # 4 · 64 rows · 128 · 128 > 2¹⁸
    x = np.random.default_rng(8).standard_normal((300, 4))
    assert tanh_mlp.tanh_mlp_derivatives(big.layers, x, "full") is not None
    assert entered == [True]
    monkeypatch.setattr(batching._busy, "active", True, raising=False)
    tanh_mlp.tanh_mlp_derivatives(big.layers, x, "full")
    assert entered == [True], "inside parallel blocks the limit is already set"
    monkeypatch.setattr(batching._busy, "active", False)
    small = mlp(2, [16, 16], np.float64)
    tanh_mlp.tanh_mlp_derivatives(small.layers, x[:, :2], "full")
    assert entered == [True], "small tiles stay on one BLAS thread by themselves"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("batch", [1, tuning.TILE + 1, 7 * tuning.TILE - 3])
@pytest.mark.parametrize("workers", [2, 3, 8])
def test_threads_sharing_the_tiles_give_the_serial_result(batch, workers, dtype):
    """Threads claim tiles from one counter: every tile once, whichever thread takes it (the
    tiles are independent, so the result is the serial one bit for bit)."""
    model = mlp(3, [20, 17, 20], dtype, out=2, total=True)
    x = np.random.default_rng(10).standard_normal((batch, 3)).astype(dtype)
    serial = tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full", workers=1)
    for _ in range(3):  # the order in which threads claim tiles varies from run to run
        shared = tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full", workers=workers)
        for a, b in zip(serial, shared):
            np.testing.assert_array_equal(a, b)


def test_public_calls_share_tiles_on_the_pool(monkeypatch, kernel_threads):
    """One kernel call per thread on the whole batch (not per block), on the caller's thread
    and the pool's, for the full Hessian, its diagonal and the Laplacian."""
    threads = kernel_threads(tanh_mlp, "_tanh_mlp")
    monkeypatch.setenv("HESSARRAY_THREADS", "2")
    model = mlp(2, [16, 16], np.float64)
    x = np.random.default_rng(11).standard_normal((5000, 2))
    for call in (ha.derivatives, ha.hessian_diagonal, ha.laplacian):
        threads.clear()
        call(model, x)
        me = threading.current_thread().name
        assert len(threads) == 2 and threads.count(me) == 1, threads
        assert next(name for name in threads if name != me).startswith("hessarray"), threads
    monkeypatch.setenv("HESSARRAY_THREADS", "1")
    threads.clear()
    ha.derivatives(model, x)
    assert threads == [threading.current_thread().name]


def test_any_memory_layout(portable):
    """Fortran-ordered, strided and read-only weights, biases and input (the kernel takes
    contiguous copies where needed: numba needs every weight and bias of one type)."""
    rng = np.random.default_rng(9)
    w1, b1 = np.asfortranarray(rng.standard_normal((6, 2))), rng.standard_normal(12)[::2]
    w2, b2 = np.asfortranarray(rng.standard_normal((5, 6))), rng.standard_normal((5, 1))
    w3 = rng.standard_normal((3, 10))[:, ::2]
    w4, b4 = rng.standard_normal((5, 5)), rng.standard_normal(5)
    for a in (w2, w4, b4):
        a.setflags(write=False)  # read-only, as from a memory map
    layers = [ha.Dense(w1, b1), ha.Tanh(), ha.Dense(w2, b2), ha.Tanh(), ha.Dense(w4, b4), ha.Tanh()]
    model = ha.Sequential(*layers, ha.Dense(w3), ha.Sum())
    x = np.asfortranarray(rng.standard_normal((70, 2)))
    got = tanh_mlp.tanh_mlp_derivatives(model.layers, x, "full")
    assert got is not None
    with portable():
        want = ha.engine.forward_mode(model.layers, x, True)
    for g, w in zip(got, want):
        _close(np.asarray(g), np.asarray(w), np.float64)
