"""The forward mode of a residual tanh network on NumPy in one compiled call (numba).

hessQuik's network: ``dense d→n, φ, K × (x + h tanh(W x + b)), dense n→1`` with ``φ`` tanh or
log-cosh. On small batches (hessQuik times batch 10) the engine's passes cost about a hundred
array operations per call, each with its own overhead on arrays of a few hundred numbers; here
one call runs the values forward, the adjoints back and the tangents forward, tile by tile
as :mod:`.tanh_mlp` does (its tiles, counter and tanh), with the residual skips added in the
loops.

The tangents start in the first layer's output space. Where the input is wider than that
layer (``d > n``) they are seeded there with the identity (``k = n`` directions instead of
``d``), and the Jacobian and Hessian are mapped back at the end (``J W₀`` and ``W₀ᵀ H W₀``,
as :func:`.forward.map_back`).

Used only where it applies exactly (:func:`tanh_resnet_derivatives` returns ``None``
otherwise): NumPy float32/float64 input and parameters of that dtype; the layers exactly
``Dense``, ``Tanh`` or ``LogCosh``, one or more ``Residual(Dense, Tanh(), h)`` of one width,
``Dense`` to one output (or to several, then ``Sum``); at most :data:`hessarray.tuning.MAX_K`
tangent directions; the fused kernels enabled and SciPy installed.
"""

from __future__ import annotations

from typing import Any

import numpy

from .. import _fused
from .._backend import symmetrize
from ..layers.dense import Dense
from ..layers.elementwise import LogCosh, Tanh
from ..layers.losses import Sum
from ..layers.residual import Residual
from . import tanh_mlp
from .forward import map_back


def _match(layers: list, x: Any) -> tuple | None:
    """``(first Dense, log-cosh first?, residual blocks, output Dense, whether a Sum follows)``
    if ``layers`` is a residual tanh network this path computes exactly for ``x``."""
    tail_sum = len(layers) >= 1 and type(layers[-1]) is Sum
    body = layers[:-1] if tail_sum else layers
    if len(body) < 4 or type(body[0]) is not Dense or type(body[1]) not in (Tanh, LogCosh):
        return None
    first, blocks, out = body[0], body[2:-1], body[-1]
    if type(out) is not Dense or (not tail_sum and out.weight.shape[0] != 1):
        return None
    n = first.weight.shape[0]
    dtype = x.dtype
    dense = [first, out]
    for block in blocks:
        if type(block) is not Residual or len(block.layers) != 2:
            return None
        inner, act = block.layers
        if type(inner) is not Dense or type(act) is not Tanh or inner.weight.shape != (n, n):
            return None
        dense.append(inner)
    for layer in dense:
        w, b = layer.weight, layer._b
        if type(w) is not numpy.ndarray or w.dtype != dtype:
            return None
        if b is not None and (type(b) is not numpy.ndarray or b.dtype != dtype):
            return None
    return first, type(body[1]) is LogCosh, blocks, out, tail_sum


def _applicable(layers: list, x: Any) -> tuple | None:
    """:func:`_match`'s layers where this path computes ``layers`` at ``x`` exactly, else ``None``."""
    if not (tanh_mlp._HAVE_BLAS and _fused.ENABLED and type(x) is numpy.ndarray and x.ndim == 2):
        return None
    batch, d = x.shape
    if x.dtype not in _fused._FLOATS or batch == 0:
        return None
    matched = _match(layers, x)
    if matched is None or min(d, matched[0].weight.shape[0]) > _fused.MAX_K:  # k tangent directions
        return None
    return matched


def applies(layers: list, x: Any) -> bool:
    """Whether :func:`tanh_resnet_derivatives` computes ``layers`` at ``x`` (for the plan)."""
    return _applicable(layers, x) is not None


def tanh_resnet_derivatives(layers: list, x: Any, part: str, workers: int = 1) -> tuple[Any, Any, Any] | None:
    """Value ``(B, 1)``, Jacobian ``(B, 1, d)`` and Hessian part (as
    :func:`~hessarray.engine.forward.forward_mode`) of a residual tanh network, or ``None``
    where this path does not apply. Tiles are shared out among ``workers`` threads."""
    matched = _applicable(layers, x)
    if matched is None:
        return None
    batch, d = x.shape
    first, logcosh, blocks, out, total = matched
    n = first.weight.shape[0]
    narrowed = d > n  # tangents seeded in the first layer's n outputs
    k = n if narrowed else d
    dtype = x.dtype
    c = tanh_mlp._c_array
    w0t = c(first.weight.T)
    b0 = c(first._b) if first._b is not None else numpy.zeros(n, dtype)
    seeds = numpy.eye(n, dtype=dtype) if narrowed else w0t
    ws = numpy.empty((len(blocks), n, n), dtype)
    wts = numpy.empty((len(blocks), n, n), dtype)
    bs = numpy.zeros((len(blocks), n), dtype)
    hs = numpy.empty(len(blocks), dtype)
    for i, block in enumerate(blocks):
        inner = block.layers[0]
        ws[i] = inner.weight
        wts[i] = inner.weight.T
        if inner._b is not None:
            bs[i] = inner._b
        hs[i] = block.h
    kept = "full" if narrowed else part  # mapped back: from the whole (k, k) Hessian
    g_last, b_out, y, jac, hess = tanh_mlp._outputs(out, total, batch, k, dtype, kept)
    diag = tanh_mlp._diagonal(kept, batch, k, dtype)
    args = (
        numpy.ascontiguousarray(x),
        w0t,
        b0,
        logcosh,
        seeds,
        ws,
        wts,
        bs,
        hs,
        g_last,
        b_out,
        y.reshape(batch),
        jac.reshape(batch, k),
        hess.reshape(-1, k, k),
        diag.reshape(-1, k),
    )
    tanh_mlp._run_tiles(_tanh_resnet, args, batch, workers, k * min(batch, tanh_mlp.TILE) * n * n)
    if narrowed:  # back from the first layer's outputs to the input: J W₀, W₀ᵀ H W₀
        outer = numpy.ascontiguousarray(first.weight.T)  # (d, n): the input's map to the seeds
        jac = (jac.reshape(batch, k) @ first.weight).reshape(batch, 1, d)
        found = map_back(numpy, hess, outer, part)
        return y, jac, symmetrize(numpy, found, owned=True) if part == "full" else found
    return y, jac, tanh_mlp._hessian_part(hess, diag, part)


if tanh_mlp._HAVE_BLAS:
    import math

    from .tanh_mlp import (
        _claim,
        _tanh_rows,
        first_layer,
        jacobian_and_mirror,
        keep_diagonal,
        push_seeds,
        push_tangents,
    )

    @tanh_mlp._jit
    def _tanh_resnet(
        x, w0t, b0, logcosh, seeds, ws, wts, bs, hs, g_last, b_out, y, jac, hess, diag, tile, counter
    ):  # pragma: no cover
        # x (B, d); w0t (d, n): the first weight's transpose; seeds (k, n): the tangents at the
        # first layer's output, the same for every sample; ws / wts (K, n, n): the blocks'
        # weights and their transposes; bs (K, n), hs (K,): their biases and steps; g_last (n,):
        # the output's gradient; hess (B, k, k), or diag (B, k) where only the diagonal is kept
        # (then hess is empty); counter (1,): the first sample no thread has claimed.
        nb = ws.shape[0]
        n = w0t.shape[1]
        k = seeds.shape[0]
        dt = w0t.dtype
        zero = dt.type(0)
        one = dt.type(1)
        m2 = dt.type(-2)
        size = tile * n
        z0 = numpy.empty((tile, n), dt)
        d1_0 = numpy.empty(size, dt)  # φ' and φ'' of the first activation
        d2_0 = numpy.empty(size, dt)
        xs = numpy.empty((nb + 1, size), dt)  # the blocks' inputs and the last output
        fs = numpy.empty((nb, size), dt)  # the blocks' tanh
        gzs = numpy.empty((nb, size), dt)  # h g φ' at the blocks' pre-activations
        g = numpy.empty(size, dt)  # adjoint at a block's output, then its input
        gp = numpy.empty(size, dt)
        t = numpy.empty(k * size, dt)  # tangents at a block's input / output, (k, T, n)
        u = numpy.empty(k * size, dt)  # at its pre-activation
        cb = numpy.empty(size, dt)
        cu = numpy.empty(size, dt)
        own = numpy.empty((tile if diag.shape[0] else 0, k, k), dt)  # a tile's Hessians: diag only
        while True:
            r0 = _claim(counter, tile)
            if r0 >= x.shape[0]:
                break
            nt = min(tile, x.shape[0] - r0)
            q_n = nt * n
            # Values forward.
            z = z0[:nt]
            first_layer(x, r0, w0t, b0, z)
            x0 = xs[0, :q_n]
            if logcosh:  # φ = log cosh, φ' = tanh, φ'' = 1 - tanh² (few values: scalar libm)
                for b in range(nt):
                    for r in range(n):
                        v = z[b, r]
                        a = abs(v)
                        x0[b * n + r] = a + math.log1p(math.exp(-2 * a)) - math.log(2.0)
            _tanh_rows(z, None)
            for b in range(nt):
                for r in range(n):
                    th = z[b, r]
                    if logcosh:
                        d1_0[b * n + r] = th
                        d2_0[b * n + r] = one - th * th
                    else:
                        x0[b * n + r] = th
                        d1_0[b * n + r] = one - th * th
                        d2_0[b * n + r] = m2 * th * (one - th * th)
            for i in range(nb):
                xi_ = xs[i, :q_n].reshape((nt, n))
                zi = fs[i, :q_n].reshape((nt, n))
                numpy.dot(xi_, wts[i], zi)
                _tanh_rows(zi, bs[i])
                h = hs[i]
                xo = xs[i + 1, :q_n]
                xin = xs[i, :q_n]
                fi = fs[i, :q_n]
                for q in range(q_n):
                    xo[q] = xin[q] + h * fi[q]
            xl = xs[nb, :q_n]
            for b in range(nt):
                acc = zero
                for r in range(n):
                    acc += xl[b * n + r] * g_last[r]
                y[r0 + b] = acc + b_out[0]
            # Adjoints back: g at a block's output; h g φ' at its pre-activation; g + (h g φ') W
            # at its input.
            for b in range(nt):
                for r in range(n):
                    g[b * n + r] = g_last[r]
            for i in range(nb - 1, -1, -1):
                h = hs[i]
                fi = fs[i, :q_n]
                gz = gzs[i, :q_n]
                for q in range(q_n):
                    v = fi[q]
                    gz[q] = h * g[q] * (one - v * v)
                numpy.dot(gz.reshape((nt, n)), ws[i], gp[:q_n].reshape((nt, n)))
                for q in range(q_n):
                    g[q] += gp[q]
            hb = own[:nt] if diag.shape[0] else hess[r0 : r0 + nt]
            hb[:] = zero
            # Tangents forward from the seeds; the first activation's curvature is g φ'' on the
            # seeds, a block's -2 tanh · (h g φ') on its pre-activation's tangents.
            for q in range(q_n):
                cb[q] = g[q] * d2_0[q]
            push_seeds(d1_0, cb, seeds, t, cu, hb, nt, n)
            for blk in range(nb):
                h = hs[blk]
                numpy.dot(t[: k * q_n].reshape((k * nt, n)), wts[blk], u[: k * q_n].reshape((k * nt, n)))
                fi = fs[blk, :q_n]
                gz = gzs[blk, :q_n]
                for q in range(q_n):
                    v = fi[q]
                    cb[q] = m2 * v * gz[q]
                    d1_0[q] = h * (one - v * v)  # (the first activation's φ' is no longer needed)
                push_tangents(u, d1_0, cb, t, cu, hb, nt, n, True)
            jacobian_and_mirror(t, g_last, jac, r0, hb, nt, n)
            keep_diagonal(hb, diag, r0, nt)
