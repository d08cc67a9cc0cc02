"""The residual tanh network in one compiled call (NumPy, numba) against the engine's portable
passes: hessQuik's network and its variants, inputs narrower and wider than the first layer,
batches across the tile size, threads sharing the tiles, and the networks it must leave alone.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from reference import assert_close

import hessarray as ha
from hessarray import _fused, tuning
from hessarray.engine import tanh_resnet

pytest.importorskip("numba")
pytest.importorskip("scipy")

TOL = {np.float64: 1e-12, np.float32: 3e-4}


def resnet(d, n, blocks, dtype, first=ha.Tanh, out=1, total=False, bias=True, h=0.5, seed=0):
    """``Dense d→n, first(), blocks × Residual(Dense n→n, Tanh(), h), Dense n→out`` (``Sum``)."""
    rng = np.random.default_rng(seed)

    def dense(o, i):
        w = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(dtype)
        return ha.Dense(w, (0.3 * rng.standard_normal(o)).astype(dtype) if bias else None)

    layers = [dense(n, d), first()]
    layers += [ha.Residual(dense(n, n), ha.Tanh(), h=h) for _ in range(blocks)]
    layers.append(dense(out, n))
    if total:
        layers.append(ha.Sum())
    return ha.Sequential(*layers)


def _close(got, want, dtype):
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close(got, want, TOL[dtype])


CASES = [  # (d, n, blocks, first, out, total, bias)
    (2, 16, 4, ha.LogCosh, 1, False, True),  # hessQuik's network, d = 2
    (64, 16, 4, ha.Tanh, 1, False, True),  # hessQuik's network, d = 64: tangents in 16 outputs
    (1, 5, 1, ha.Tanh, 1, False, False),  # one block, no bias
    (7, 7, 2, ha.LogCosh, 3, True, True),  # the input as wide as the first layer; outputs summed
    (9, 6, 3, ha.Tanh, 1, False, True),  # narrowed, unequal to hessQuik's sizes
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 10, tuning.TILE, 2 * tuning.TILE + 3])
@pytest.mark.parametrize(("d", "n", "blocks", "first", "out", "total", "bias"), CASES)
def test_matches_portable_passes(matches_portable, d, n, blocks, first, out, total, bias, batch, dtype):
    model = resnet(d, n, blocks, dtype, first=first, out=out, total=total, bias=bias)
    x = (1.5 * np.random.default_rng(1).standard_normal((batch, d))).astype(dtype)
    matches_portable(tanh_resnet.tanh_resnet_derivatives, model, x, TOL[dtype])


@pytest.mark.parametrize("workers", [2, 3])
def test_threads_sharing_the_tiles_give_the_serial_result(workers):
    model = resnet(3, 12, 2, np.float64, first=ha.LogCosh)
    x = np.random.default_rng(2).standard_normal((5 * tuning.TILE + 7, 3))
    serial = tanh_resnet.tanh_resnet_derivatives(model.layers, x, "full", workers=1)
    for _ in range(3):
        shared = tanh_resnet.tanh_resnet_derivatives(model.layers, x, "full", workers=workers)
        for a, b in zip(serial, shared):
            np.testing.assert_array_equal(a, b)


def test_public_calls_take_it(kernel_threads, portable):
    """``derivatives``, ``hessian_diagonal`` and ``laplacian`` run the compiled call, and agree
    with the portable passes."""
    calls = kernel_threads(tanh_resnet, "_tanh_resnet")
    model = resnet(64, 16, 4, np.float64)
    x = np.random.default_rng(3).standard_normal((10, 64))
    public = {
        "derivatives": lambda: tuple(ha.derivatives(model, x)),
        "hessian_diagonal": lambda: (ha.hessian_diagonal(model, x),),
        "laplacian": lambda: (ha.laplacian(model, x),),
    }
    for name, call in public.items():
        calls.clear()
        got = call()
        assert calls == [threading.current_thread().name], name  # one tile: no other thread
        with portable():
            want = call()
        for g, w in zip(got, want):
            _close(np.asarray(g), np.asarray(w), np.float64)


def _unmatched():
    rng = np.random.default_rng(4)

    def dense(o, i, dtype=np.float64):
        return ha.Dense(rng.standard_normal((o, i)).astype(dtype), rng.standard_normal(o).astype(dtype))

    def block(n, *inner):
        return ha.Residual(*(inner or (dense(n, n), ha.Tanh())), h=0.5)

    return {
        "another activation first": [dense(4, 2), ha.Sigmoid(), block(4), dense(1, 4)],
        "another activation in a block": [dense(4, 2), ha.Tanh(), block(4, dense(4, 4), ha.Sigmoid()), dense(1, 4)],
        "three layers in a block": [dense(4, 2), ha.Tanh(), block(4, dense(4, 4), ha.Tanh(), ha.Tanh()), dense(1, 4)],
        "two dense layers at the end": [dense(4, 2), ha.Tanh(), block(4), dense(3, 4), dense(1, 3)],
        "two outputs, no Sum": [dense(4, 2), ha.Tanh(), block(4), dense(2, 4)],
        "no dense first": [ha.Tanh(), block(2), dense(1, 2)],
        "a float32 weight": [dense(4, 2), ha.Tanh(), block(4), dense(1, 4, np.float32)],
        "more directions than the loops take": [dense(30, 40), ha.Tanh(), block(30), dense(1, 30)],
    }


@pytest.mark.parametrize("case", list(_unmatched()))
def test_falls_back_where_it_does_not_apply(case):
    layers = _unmatched()[case]
    d = 40 if case.startswith("more directions") else 2
    x = np.random.default_rng(5).standard_normal((3, d))
    assert tanh_resnet.tanh_resnet_derivatives(layers, x, "full") is None


def test_falls_back_for_other_inputs(portable):
    model = resnet(2, 8, 2, np.float64)
    x = np.random.default_rng(6).standard_normal((4, 2))
    assert tanh_resnet.tanh_resnet_derivatives(model.layers, x.astype(np.float32), "full") is None
    assert tanh_resnet.tanh_resnet_derivatives(model.layers, x[:0], "full") is None
    with portable():  # switched off
        assert tanh_resnet.tanh_resnet_derivatives(model.layers, x, "full") is None
    assert _fused.ENABLED
    got = ha.derivatives(model, x[:1])  # one sample through the public call
    with portable():
        want = ha.derivatives(model, x[:1])
    for g, w in zip(got, want):
        _close(np.asarray(g), np.asarray(w), np.float64)
