"""The forward mode of a tanh MLP on NumPy, fused over tiles of samples (numba).

For ``dense, tanh, (dense, tanh)…, dense → 1 output`` the engine's passes are, per hidden
layer and block, about ten NumPy operations over ``(B, n)`` arrays: the activation's
derivatives, the adjoint's pull, the tangents' push, the curvature; each reads and writes
memory the size of the block. Here the values still run as NumPy GEMMs and NumPy's vectorized
``tanh`` over the block (numba's scalar ``tanh`` is ~20× slower), but everything after them —
the adjoints back and the tangents forward, each layer's GEMM by BLAS (numba's ``np.dot``) and
its elementwise work in one loop — runs in one compiled call, tile by tile, so that a tile's
operands stay in the core's cache between the GEMM and the loop that reads its result.

Counted on the PINN-like benchmark (d = 2, width 64, depth 4, float64): the GEMMs are 1.03
GFLOP per 10 000 samples, the same as the engine's; the elementwise passes drop from about 17
to 6 reads and writes of a ``(B, n)`` array per hidden layer (derivatives recomputed from
``tanh`` where needed instead of stored). Measured on one thread: 43 against ~32 ms per call.

Used only where it applies exactly (:func:`tanh_mlp_derivatives` returns ``None``
otherwise, and the engine runs its portable passes): NumPy float32/float64 input and
parameters of that dtype, the layers exactly ``Dense, Tanh`` pairs then one ``Dense`` to one
output (or to several, then ``Sum``), the input no wider than the first layer and at most
:data:`hessarray._fused.MAX_K` wide, the fused kernels enabled, and SciPy installed (numba's
``np.dot`` calls SciPy's BLAS).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy

from .. import _fused
from ..layers.dense import Dense
from ..layers.elementwise import Tanh
from ..layers.losses import Sum

#: Samples per tile: a tile's adjoints, curvature weights and tangents (k = 2, width 64,
#: float64: ~200 kB) stay in a core's 1 MB L2 cache. One thread, PINN-like, float64: 64 → 40.0,
#: 128 → 37.6, 256 → 35.7 ms for the whole call (values included); 128 is kept for float32
#: (16.2 against 16.4 ms at 256) and the smaller L2 caches of other machines.
TILE = 64

# numba's ``np.dot`` needs SciPy's BLAS; loading it here, at import, also puts its OpenBLAS
# under the thread limit that block-parallel runs set (threadpoolctl sees the libraries loaded
# when its controller is made).
_HAVE_BLAS = _fused.numba is not None and importlib.util.find_spec("scipy") is not None
if _HAVE_BLAS:
    import scipy.linalg.cython_blas  # noqa: F401


def _match(layers: list, x: Any) -> tuple[list, Any, list] | None:
    """``(hidden Dense layers, output Dense, tail layers)`` if ``layers`` is a tanh MLP this
    path computes exactly for ``x``, else ``None``."""
    n = len(layers)
    tail_sum = n >= 1 and type(layers[-1]) is Sum
    body = layers[:-1] if tail_sum else layers
    if len(body) < 3 or len(body) % 2 == 0 or type(body[-1]) is not Dense:
        return None
    hidden = body[0:-1:2]
    for dense, act in zip(hidden, body[1:-1:2]):
        if type(dense) is not Dense or type(act) is not Tanh:
            return None
    out = body[-1]
    if not tail_sum and out.weight.shape[0] != 1:
        return None
    dtype = x.dtype
    for dense in (*hidden, out):
        w, b = dense.weight, dense._b
        if type(w) is not numpy.ndarray or w.dtype != dtype:
            return None
        if b is not None and (type(b) is not numpy.ndarray or b.dtype != dtype):
            return None
    return hidden, out, body[-1:] + ([layers[-1]] if tail_sum else [])


def tanh_mlp_derivatives(layers: list, x: Any, part: str) -> tuple[Any, Any, Any] | None:
    """Value ``(B, 1)``, Jacobian ``(B, 1, d)`` and Hessian part (as
    :func:`~hessarray.engine.forward.forward_mode`) of a tanh MLP, or ``None`` where this path
    does not apply."""
    if not (_HAVE_BLAS and _fused.ENABLED and type(x) is numpy.ndarray and x.ndim == 2):
        return None
    batch, d = x.shape
    if x.dtype not in _fused._FLOATS or batch == 0 or d > _fused.MAX_K:
        return None
    matched = _match(layers, x)
    if matched is None:
        return None
    hidden, out, tail = matched
    if d > hidden[0].weight.shape[0]:  # the engine seeds a narrower space there
        return None
    fs = []
    f = x
    for dense in hidden:
        f, _ = dense.forward(f)  # a fresh (B, n) product, the bias added in place
        numpy.tanh(f, out=f)
        fs.append(f)
    y = f
    for layer in tail:
        y, _ = layer.forward(y)
    w_out = out.weight
    g_last = numpy.ascontiguousarray(w_out.sum(axis=0) if len(tail) == 2 else w_out[0])
    ws = [numpy.ascontiguousarray(dense.weight) for dense in hidden[1:]]
    wts = [numpy.ascontiguousarray(dense.weight.T) for dense in hidden[1:]]
    if not ws:  # one hidden layer: numba needs a non-empty tuple (never read)
        ws = wts = [g_last.reshape(1, -1)]
    seeds = numpy.ascontiguousarray(hidden[0].weight.T)
    jac = numpy.empty((batch, 1, d), x.dtype)
    hess = numpy.empty((batch, 1, d, d), x.dtype)
    _tanh_mlp(tuple(fs), tuple(ws), tuple(wts), seeds, g_last, jac.reshape(batch, d), hess.reshape(batch, d, d), TILE)
    if part == "diag":
        return y, jac, numpy.ascontiguousarray(numpy.diagonal(hess, axis1=-2, axis2=-1))
    if part == "trace":
        return y, jac, numpy.trace(hess, axis1=-2, axis2=-1)
    return y, jac, hess


if _HAVE_BLAS:
    _jit = _fused.numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})

    @_jit
    def _tanh_mlp(fs, ws, wts, seeds, g_last, jac, hess, tile):  # pragma: no cover - compiled
        nl = len(fs)
        batch = fs[0].shape[0]
        k = seeds.shape[0]
        width = 0
        for l in range(nl):
            width = max(width, fs[l].shape[1])
        dt = seeds.dtype
        zero = dt.type(0)
        size = tile * width
        cs = numpy.empty((nl, size), dt)
        gz = numpy.empty(size, dt)
        gp = numpy.empty(size, dt)
        dv = numpy.empty(size, dt)
        cu = numpy.empty(size, dt)
        t = numpy.empty(k * size, dt)
        u = numpy.empty(k * size, dt)
        for r0 in range(0, batch, tile):
            nt = min(tile, batch - r0)
            for l in range(nl - 1, -1, -1):
                f = fs[l]
                n = f.shape[1]
                ff = f.reshape(batch * n)[r0 * n : (r0 + nt) * n]
                c = cs[l]
                if l == nl - 1:
                    for b in range(nt):
                        for r in range(n):
                            v = ff[b * n + r]
                            d1 = 1 - v * v
                            gg = g_last[r]
                            c[b * n + r] = -2 * v * d1 * gg
                            gz[b * n + r] = gg * d1
                else:
                    for q in range(nt * n):
                        v = ff[q]
                        d1 = 1 - v * v
                        gg = gp[q]
                        c[q] = -2 * v * d1 * gg
                        gz[q] = gg * d1
                if l > 0:
                    w = ws[l - 1]
                    m = w.shape[1]
                    numpy.dot(gz[: nt * n].reshape((nt, n)), w, gp[: nt * m].reshape((nt, m)))
            h = hess[r0 : r0 + nt]
            h[:] = zero
            # first layer
            f = fs[0]
            n = f.shape[1]
            ff = f.reshape(batch * n)[r0 * n : (r0 + nt) * n]
            c = cs[0]
            for q in range(nt * n):
                v = ff[q]
                dv[q] = 1 - v * v
            for i in range(k):
                ti = t[i * nt * n : (i + 1) * nt * n]
                for b in range(nt):
                    for r in range(n):
                        ti[b * n + r] = dv[b * n + r] * seeds[i, r]
                        cu[b * n + r] = c[b * n + r] * seeds[i, r]
                for j in range(i, k):
                    for b in range(nt):
                        acc = zero
                        for r in range(n):
                            acc += cu[b * n + r] * seeds[j, r]
                        h[b, i, j] += acc
            for l in range(1, nl):
                m = n
                f = fs[l]
                n = f.shape[1]
                numpy.dot(t[: k * nt * m].reshape((k * nt, m)), wts[l - 1], u[: k * nt * n].reshape((k * nt, n)))
                ff = f.reshape(batch * n)[r0 * n : (r0 + nt) * n]
                c = cs[l]
                for q in range(nt * n):
                    v = ff[q]
                    dv[q] = 1 - v * v
                for i in range(k):
                    ui = u[i * nt * n : (i + 1) * nt * n]
                    ti = t[i * nt * n : (i + 1) * nt * n]
                    for q in range(nt * n):
                        x = ui[q]
                        cu[q] = c[q] * x
                        ti[q] = dv[q] * x
                    for j in range(i, k):
                        uj = u[j * nt * n : (j + 1) * nt * n]
                        for b in range(nt):
                            acc = zero
                            for r in range(n):
                                acc += cu[b * n + r] * uj[b * n + r]
                            h[b, i, j] += acc
            for i in range(k):
                ti = t[i * nt * n : (i + 1) * nt * n]
                for b in range(nt):
                    acc = zero
                    for r in range(n):
                        acc += ti[b * n + r] * g_last[r]
                    jac[r0 + b, i] = acc
            for b in range(nt):
                for i in range(k):
                    for j in range(i):
                        h[b, i, j] = h[b, j, i]
