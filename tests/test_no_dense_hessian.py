"""``laplacian`` and ``hessian_diagonal`` never form the ``(B, d, d)`` Hessians of a batch.

tracemalloc sees NumPy's allocations on every thread. Each case takes a
batch whose ``(B, d, d)`` array dwarfs what the call legitimately holds (its blocks or tiles in
flight, and ``O(B·d)`` results), and checks that the call's peak stays well below that array:
for the portable executor (a Softplus MLP, a tanh MLP with the compiled kernels off, a first
layer that narrows a wide input) and NumPy's compiled one (a tanh MLP, a residual tanh network,
with and without such a narrowing layer), in float32 and float64.
"""

from __future__ import annotations

import tracemalloc
from contextlib import nullcontext

import numpy as np
import pytest

import hessarray as ha
from hessarray._numpy import network

RNG = np.random.default_rng(13)
#: The peak may reach at most this share of the batch's (B, d, d) array (before the compiled
#: executor reduced each tile's Hessians itself, its peak was 1.15 times that array).
SHARE = 0.5


def weight(rows: int, cols: int, dtype) -> np.ndarray:
    return (RNG.standard_normal((rows, cols)) / cols**0.5).astype(dtype)


def mlp(act, d: int, width: int, dtype, first: int | None = None) -> ha.Sequential:
    """``d → first → width → 1``: ``first`` (default ``width``) below ``d`` narrows the input."""
    first = width if first is None else first
    return ha.Sequential(
        ha.Dense(weight(first, d, dtype), RNG.standard_normal(first).astype(dtype)),
        act(),
        ha.Dense(weight(width, first, dtype), RNG.standard_normal(width).astype(dtype)),
        act(),
        ha.Dense(weight(1, width, dtype)),
    )


def resnet(d: int, n: int, dtype) -> ha.Sequential:
    """hessQuik's residual tanh network: ``d → n``, tanh, two residual tanh blocks, ``n → 1``."""
    blocks = [ha.Residual(ha.Dense(weight(n, n, dtype), RNG.standard_normal(n).astype(dtype)), ha.Tanh(), h=0.5)]
    return ha.Sequential(
        ha.Dense(weight(n, d, dtype), RNG.standard_normal(n).astype(dtype)),
        ha.Tanh(),
        *blocks,
        ha.Residual(ha.Dense(weight(n, n, dtype)), ha.Tanh(), h=0.5),
        ha.Dense(weight(1, n, dtype)),
    )


# name: (model(dtype), d, batch, executor, fused kernels on)
CASES = {
    "softplus-mlp": (lambda dt: mlp(ha.Softplus, 32, 32, dt), 32, 24000, "numpy-compiled", True),
    "tanh-mlp-fused-off": (lambda dt: mlp(ha.Tanh, 32, 32, dt), 32, 24000, "portable", False),
    "softplus-narrowing": (lambda dt: mlp(ha.Softplus, 64, 32, dt, first=8), 64, 4000, "numpy-compiled", True),
    "softplus-narrowing-off": (lambda dt: mlp(ha.Softplus, 64, 32, dt, first=8), 64, 4000, "portable", False),
    "tanh-mlp-compiled": (lambda dt: mlp(ha.Tanh, 24, 32, dt), 24, 8000, "numpy-compiled", True),
    "tanh-resnet-compiled": (lambda dt: resnet(24, 32, dt), 24, 8000, "numpy-compiled", True),
    "tanh-resnet-narrowing": (lambda dt: resnet(64, 16, dt), 64, 4000, "numpy-compiled", True),
}


def peak_bytes(fn) -> int:
    """Peak bytes tracemalloc sees during ``fn()`` (after a first call, which compiles)."""
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("part", ["trace", "diag"])
@pytest.mark.parametrize("case", list(CASES))
def test_no_batch_of_hessians(monkeypatch, portable, case, part, dtype):
    make, d, batch, executor, fused = CASES[case]
    if executor != "portable" and not network.HAVE_BLAS:
        pytest.skip("NumPy's compiled executor needs numba and SciPy")
    monkeypatch.setenv("HESSARRAY_THREADS", "2")  # two blocks or tile buffers in flight
    model = make(dtype)
    x = RNG.standard_normal((batch, d)).astype(dtype)
    fn = ha.laplacian if part == "trace" else ha.hessian_diagonal
    dense = batch * d * d * np.dtype(dtype).itemsize
    with portable() if not fused else nullcontext():
        assert ha.plan(model, x, part=part).executor == executor
        peak = peak_bytes(lambda: fn(model, x))
    assert peak < SHARE * dense, f"peak {peak} B, the (B, d, d) Hessians {dense} B"
