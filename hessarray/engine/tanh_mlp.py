"""The forward mode of a tanh MLP on NumPy, fused over tiles of samples (numba).

For ``dense, tanh, (dense, tanh)…, dense → 1 output`` the engine's passes are, per hidden
layer and block, about ten NumPy operations over ``(B, n)`` arrays (the product, the bias,
tanh, its derivatives, the adjoint's pull, the tangents' push, the curvature), each reading
and writing memory the size of the block. Here one compiled call per thread runs the whole
batch, tile by tile, each call taking the next tile from a shared counter: per tile, the
values forward, the adjoints back and the tangents forward, each layer's GEMM by BLAS
(numba's ``np.dot``) and its elementwise work in loops over the tile, so that a tile's
operands stay in the core's cache between the GEMM and the loop that reads its result.

Counted on the PINN-like benchmark (d = 2, width 64, depth 4): the GEMMs are the engine's,
1.03 GFLOP per 10 000 samples; the elementwise work drops from about 17 passes over a
``(B, n)`` array per hidden layer, most of them out of cache, to 4 over a tile in L2 (φ'
recomputed from tanh where needed instead of stored; with more than two input directions,
about 8). The timings are in ``docs/benchmarks.md``.

tanh is the kernel's own (:func:`tanh_rows`): numba's calls the scalar C library function,
which does not vectorize; this one vectorizes, within 2 ulp of the exact value.

Used only where it applies exactly (:func:`tanh_mlp_derivatives` returns ``None``
otherwise, and the engine runs its portable passes): NumPy float32/float64 input and
parameters of that dtype, the layers exactly ``Dense, Tanh`` pairs then one ``Dense`` to one
output (or to several, then ``Sum``), the input no wider than the first layer and at most
:data:`hessarray.tuning.MAX_K` wide, the fused kernels enabled, and SciPy installed (numba's
``np.dot`` calls SciPy's BLAS).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy

from .. import _fused
from ..layers.dense import Dense
from ..layers.elementwise import Tanh
from ..layers.losses import Sum
from ..tuning import BLAS_THREADED_WORK, TILE
from . import batching

# numba's ``np.dot`` needs SciPy's BLAS; loading it here, at import, also puts its OpenBLAS
# under the thread limit that block-parallel runs set (threadpoolctl sees the libraries loaded
# when its controller is made).
_HAVE_BLAS = False
if _fused.numba is not None:
    try:
        import scipy.linalg.cython_blas  # noqa: F401

        _HAVE_BLAS = True
    except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
        pass


def _match(layers: list, x: Any) -> tuple[list, Any, bool] | None:
    """``(hidden Dense layers, output Dense, whether a Sum follows it)`` if ``layers`` is a
    tanh MLP this path computes exactly for ``x``, else ``None``."""
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
    return hidden, out, tail_sum


def _c_array(a: Any) -> Any:
    """``a`` as a C-contiguous, writeable array (a copy only where it is not): numba indexes a
    tuple by a loop variable only if its items share one type, layout and writeability."""
    return a if a.flags.c_contiguous and a.flags.writeable else numpy.array(a, order="C")


def _outputs(out: Dense, total: bool, batch: int, k: int, dtype: Any, part: str = "full") -> tuple:
    """The output layer's gradient ``(n,)`` and bias ``(1,)`` as the kernels take them (summed
    over the outputs if ``total``), and the value, Jacobian and Hessian arrays they fill. The
    Hessian array is empty (no samples) where only its diagonal or trace is asked for: the
    kernels then keep each tile's Hessians in a buffer of their own (:func:`_diagonal`)."""
    w, b = out.weight, out._b
    g_last = numpy.ascontiguousarray(w.sum(axis=0) if total else w[0])
    b_out = numpy.zeros(1, dtype) if b is None else numpy.reshape(b.sum() if total else b[0], (1,))
    y = numpy.empty((batch, 1), dtype)
    rows = batch if part == "full" else 0
    return g_last, b_out, y, numpy.empty((batch, 1, k), dtype), numpy.empty((rows, 1, k, k), dtype)


def _diagonal(part: str, batch: int, k: int, dtype: Any) -> Any:
    """The ``(B, 1, k)`` array the kernels write the Hessians' diagonals into, tile by tile,
    where ``part`` is ``"diag"`` or ``"trace"`` (then the Hessian array is empty); an empty one
    for the full Hessian."""
    return numpy.empty((0 if part == "full" else batch, 1, k), dtype)


def _applicable(layers: list, x: Any) -> tuple | None:
    """:func:`_match`'s layers where this path computes ``layers`` at ``x`` exactly, else ``None``."""
    if not (_HAVE_BLAS and _fused.ENABLED and type(x) is numpy.ndarray and x.ndim == 2):
        return None
    batch, d = x.shape
    if x.dtype not in _fused._FLOATS or batch == 0 or d > _fused.MAX_K:
        return None
    matched = _match(layers, x)
    if matched is None or d > matched[0][0].weight.shape[0]:  # the engine seeds a narrower space there
        return None
    return matched


def applies(layers: list, x: Any) -> bool:
    """Whether :func:`tanh_mlp_derivatives` computes ``layers`` at ``x`` (for the plan)."""
    return _applicable(layers, x) is not None


def tanh_mlp_derivatives(layers: list, x: Any, part: str, workers: int = 1) -> tuple[Any, Any, Any] | None:
    """Value ``(B, 1)``, Jacobian ``(B, 1, d)`` and Hessian part (as
    :func:`~hessarray.engine.forward.forward_mode`) of a tanh MLP, or ``None`` where this path
    does not apply.

    The batch's tiles are shared out among ``workers`` threads as they go (each call of the
    kernel claims the next tile from a shared counter; :func:`.batching.run_shared`)."""
    matched = _applicable(layers, x)
    if matched is None:
        return None
    batch, d = x.shape
    hidden, out, total = matched  # total: several outputs, then Sum
    dtype = x.dtype
    g_last, b_out, y, jac, hess = _outputs(out, total, batch, d, dtype, part)
    diag = _diagonal(part, batch, d, dtype)
    biases = tuple(
        _c_array(dense._b) if dense._b is not None else numpy.zeros(dense.weight.shape[0], dtype) for dense in hidden
    )
    ws = [_c_array(dense.weight) for dense in hidden[1:]]
    wts = [_c_array(dense.weight.T) for dense in hidden[1:]]
    if not ws:  # one hidden layer: numba needs a non-empty tuple (never read)
        ws = wts = [g_last.reshape(1, -1)]
    seeds = numpy.ascontiguousarray(hidden[0].weight.T)
    args = (
        numpy.ascontiguousarray(x),
        seeds,
        biases,
        tuple(ws),
        tuple(wts),
        g_last,
        b_out,
        y.reshape(batch),
        jac.reshape(batch, d),
        hess.reshape(-1, d, d),
        diag.reshape(-1, d),
    )
    tile_work = d * min(batch, TILE) * max(w.shape[0] * w.shape[1] for w in ws)
    _run_tiles(_tanh_mlp, args, batch, workers, tile_work)
    return y, jac, _hessian_part(hess, diag, part)


def _run_tiles(kernel: Any, args: tuple, batch: int, workers: int, tile_work: int) -> None:
    """``kernel(*args, TILE, counter)`` on up to ``workers`` threads (one per tile at most),
    which share the batch's tiles by claiming them from ``counter``. ``tile_work``: the largest
    ``M·N·K`` of one tile's products."""
    counter = numpy.zeros(1, numpy.int64)  # the first sample no thread has claimed
    workers = min(workers, -(-batch // TILE))
    if workers > 1:  # each thread gets one BLAS thread
        batching.run_shared(lambda: kernel(*args, TILE, counter), workers)
        return
    # OpenBLAS splits a product over its threads from M·N·K > 2¹⁸ on: on a tile that costs more
    # than it gains. A serial call gets the one-thread limit here too.
    with batching.serial_blas() if tile_work > BLAS_THREADED_WORK else nullcontext():
        kernel(*args, TILE, counter)


def _hessian_part(hess: Any, diag: Any, part: str) -> Any:
    """The Hessian ``hess`` ``(B, 1, k, k)``, or its diagonal ``diag`` ``(B, 1, k)`` or trace
    (its sum: as ``numpy.trace`` adds the diagonal), as ``part`` asks."""
    if part == "diag":
        return diag
    if part == "trace":
        return numpy.sum(diag, axis=-1)
    return hess


if _HAVE_BLAS:
    import math

    from llvmlite import ir as llvm_ir
    from numba.core import types as nbtypes
    from numba.extending import intrinsic, overload

    # Reassociation vectorizes the kernel's sums (NaN and inf keep their IEEE behaviour).
    _jit = _fused.numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})

    @intrinsic
    def _float_from_bits(typingctx, bits):  # pragma: no cover - compiled
        """The float whose IEEE 754 bits are ``bits`` (int64 → float64, int32 → float32): LLVM's
        bitcast, which vectorizes (numba has no scalar bit cast of its own)."""
        if bits == nbtypes.int64:
            sig, ty = nbtypes.float64(bits), llvm_ir.DoubleType()
        elif bits == nbtypes.int32:
            sig, ty = nbtypes.float32(bits), llvm_ir.FloatType()
        else:
            return None

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ty)

        return sig, codegen

    @intrinsic
    def _claim(typingctx, counter, step):  # pragma: no cover - compiled
        """``counter[0] += step`` as one atomic operation; the value before (the threads that
        run the kernel on one batch take its tiles from one counter)."""
        if not (isinstance(counter, nbtypes.Array) and counter.dtype == nbtypes.int64):
            return None

        def codegen(context, builder, signature, args):
            data = context.make_array(signature.args[0])(context, builder, args[0]).data
            step = context.cast(builder, args[1], signature.args[1], nbtypes.int64)
            # "monotonic": only the counter is shared; the tiles' outputs are disjoint, and the
            # threads are joined before they are read.
            return builder.atomic_rmw("add", data, step, "monotonic")

        return nbtypes.int64(counter, step), codegen

    # tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) with the sign of x. expm1(y), y = n ln2 + r,
    # |r| ≤ ln2/2, is 2ⁿ expm1(r) + (2ⁿ - 1): expm1(r) by its Taylor series (degree 13 in
    # float64, 7 in float32: truncation below half an ulp). 2ⁿ is the float whose bits are
    # (n + exponent bias)·2^(mantissa bits), that integer formed in floating point, where it
    # is exact (numba widens int32 sums to int64, which slows float32's loop). Within 2
    # ulp of the exact tanh (checked against mpmath in the tests); NaN, ±inf, ±0 and
    # subnormals as NumPy's. |x| is clamped where tanh rounds to ±1, which keeps n within the
    # normal exponents.
    _C64 = tuple(1.0 / math.factorial(i) for i in range(13, 1, -1))
    _C32 = tuple(numpy.float32(1.0 / math.factorial(i)) for i in range(7, 1, -1))

    def _tanh_rows64(z, bias):  # pragma: no cover - compiled
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                x = z[b, r] if bias is None else z[b, r] + bias[r]
                a = min(abs(x), 20.0)
                n = numpy.floor(-2.8853900817779268 * a + 0.5)  # -2|x| / ln2, rounded: -58…0
                s = _float_from_bits(numpy.int64(n * 4503599627370496.0 + 4607182418800017408.0))  # (n+1023)·2⁵²
                y = (-2.0 * a - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10
                q = _C64[0]
                for c in _C64[1:]:
                    q = q * y + c
                p = y + y * y * q
                em = s * p + (s - 1.0)
                t = numpy.copysign(em / (-2.0 - em), x)
                z[b, r] = t if x == x else x

    def _tanh_rows32(z, bias):  # pragma: no cover - compiled
        f = numpy.float32
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                x = z[b, r] if bias is None else z[b, r] + bias[r]
                a = min(abs(x), f(10.0))
                n = numpy.floor(f(-2.8853900817779268) * a + f(0.5))  # -29…0
                s = _float_from_bits(numpy.int32(n * f(8388608.0) + f(1065353216.0)))  # (n+127)·2²³
                y = (f(-2.0) * a - n * f(0.693359375)) - n * f(-2.12194440e-4)
                q = _C32[0]
                for c in _C32[1:]:
                    q = q * y + c
                p = y + y * y * q
                em = s * p + (s - f(1.0))
                t = numpy.copysign(em / (f(-2.0) - em), x)
                z[b, r] = t if x == x else x

    def _tanh_rows(z: Any, bias: Any) -> None:  # pragma: no cover - numba's overload below
        raise NotImplementedError

    # Compiled apart from the kernel, without its reassociation (which could undo the
    # argument reduction's split of ln 2 or cancel digits in ``s·p + (s - 1)``).
    @overload(_tanh_rows, jit_options={"nogil": True, "fastmath": {"contract"}, "error_model": "numpy"})
    def _tanh_rows_overload(z, bias):  # pragma: no cover - compiled
        if z.dtype == _fused.numba.types.float64:
            return _tanh_rows64
        if z.dtype == _fused.numba.types.float32:
            return _tanh_rows32
        return None

    @_jit
    def tanh_rows(z, bias):  # pragma: no cover - compiled
        """``z ← tanh(z + bias)`` in place, ``z`` ``(rows, n)`` C-contiguous float32/64,
        ``bias`` ``(n,)`` or None: the kernel's tanh, callable from Python (for the tests)."""
        _tanh_rows(z, bias)

    # The kernels' shared steps over one tile of nt samples and n units; tangents (k, nt, n).

    @_jit
    def first_layer(x, r0, w_t, bias, z):  # pragma: no cover - compiled
        """``z ← x[r0 : r0 + nt] w_t + bias`` for ``x`` (B, k), ``w_t`` (k, n), ``z`` (nt, n)."""
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                z[b, r] = bias[r]
            for i in range(w_t.shape[0]):
                xi = x[r0 + b, i]
                for r in range(z.shape[1]):
                    z[b, r] += xi * w_t[i, r]

    @_jit
    def push_seeds(d1, c, seeds, t, cu, h, nt, n):  # pragma: no cover - compiled
        """Tangents ``t_i = φ' s_i`` from ``seeds`` (k, n), the same for every sample, and the
        curvature ``h[b, i, j] += Σ_r c[b, r] s_ir s_jr`` (``cu``: scratch)."""
        k = seeds.shape[0]
        zero = d1.dtype.type(0)
        for i in range(k):
            ti = t[i * nt * n : (i + 1) * nt * n]
            for b in range(nt):
                for r in range(n):
                    ti[b * n + r] = d1[b * n + r] * seeds[i, r]
                    cu[b * n + r] = c[b * n + r] * seeds[i, r]
            for j in range(i, k):
                for b in range(nt):
                    acc = zero
                    for r in range(n):
                        acc += cu[b * n + r] * seeds[j, r]
                    h[b, i, j] += acc

    @_jit
    def push_tangents(u, d1, c, t, cu, h, nt, n, skip):  # pragma: no cover - compiled
        """Tangents ``t_i = φ' u_i`` (``skip``: ``t_i += φ' u_i``, a residual block) from the
        pre-activation's ``u`` (k, nt, n), and the curvature ``h[b, i, j] += Σ_r c u_ir u_jr``."""
        k = h.shape[1]
        zero = d1.dtype.type(0)
        for i in range(k):
            ui = u[i * nt * n : (i + 1) * nt * n]
            ti = t[i * nt * n : (i + 1) * nt * n]
            if skip:
                for q in range(nt * n):
                    cu[q] = c[q] * ui[q]
                    ti[q] += d1[q] * ui[q]
            else:
                for q in range(nt * n):
                    cu[q] = c[q] * ui[q]
                    ti[q] = d1[q] * ui[q]
            for j in range(i, k):
                uj = u[j * nt * n : (j + 1) * nt * n]
                for b in range(nt):
                    acc = zero
                    for r in range(n):
                        acc += cu[b * n + r] * uj[b * n + r]
                    h[b, i, j] += acc

    @_jit
    def jacobian_and_mirror(t, g_last, jac, r0, h, nt, n):  # pragma: no cover - compiled
        """``jac[r0 + b, i] = Σ_r t_i[b, r] g_last[r]``, and ``h``'s lower triangle from its
        upper one."""
        k = h.shape[1]
        zero = t.dtype.type(0)
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

    @_jit
    def keep_diagonal(h, diag, r0, nt):  # pragma: no cover - compiled
        """``diag[r0 + b, i] = h[b, i, i]`` where the diagonal is kept (``diag`` not empty)."""
        if diag.shape[0]:
            for b in range(nt):
                for i in range(h.shape[1]):
                    diag[r0 + b, i] = h[b, i, i]

    @_jit
    def _tanh_mlp(x, seeds, biases, ws, wts, g_last, b_out, y, jac, hess, diag, tile, counter):  # pragma: no cover
        # x (B, k); seeds: the first weight's transpose (k, n_0); biases[l] (n_l,); ws[l-1] /
        # wts[l-1]: the weight (n_l, n_{l-1}) into hidden layer l and its transpose, both
        # C-contiguous; g_last: the output's gradient at the last tanh (n,); b_out: its bias;
        # counter (1,): the first sample not yet claimed by a thread running this on the batch.
        # hess (B, k, k), or diag (B, k) where only the diagonal is kept (then hess is empty).
        # Per tile: values forward, adjoints back, tangents forward with the curvature.
        nl = len(biases)
        batch = x.shape[0]
        k = seeds.shape[0]
        width = 0
        for l in range(nl):
            width = max(width, biases[l].shape[0])
        dt = seeds.dtype
        zero = dt.type(0)
        one = dt.type(1)
        m2 = dt.type(-2)  # typed: an int literal with a float32 promotes to float64 in numba
        size = tile * width
        fs = numpy.empty((nl, size), dt)  # tanh outputs
        gzs = numpy.empty((nl, size), dt)  # adjoints at the pre-activations, g φ'
        cb = numpy.empty(size, dt)  # curvature weights g φ''
        gp = numpy.empty(size, dt)  # adjoint at the previous layer's output
        dv = numpy.empty(size, dt)
        cu = numpy.empty(size, dt)
        t = numpy.empty(k * size, dt)  # tangents at a layer's output, (k, T, n)
        u = numpy.empty(k * size, dt)  # tangents at its pre-activation
        own = numpy.empty((tile if diag.shape[0] else 0, k, k), dt)  # a tile's Hessians: diag only
        s0 = seeds[0]
        s1 = seeds[k - 1]
        s00 = s0 * s0  # the first layer's u_i u_j, the same for every sample
        s01 = s0 * s1
        s11 = s1 * s1
        while True:  # the next unclaimed tile, until none is left
            r0 = _claim(counter, tile)
            if r0 >= batch:
                break
            nt = min(tile, batch - r0)
            # Values forward: the first layer (k inputs) in a loop, then one GEMM per layer.
            n = biases[0].shape[0]
            z = fs[0, : nt * n].reshape((nt, n))
            first_layer(x, r0, seeds, biases[0], z)
            _tanh_rows(z, None)
            for l in range(1, nl):
                m = n
                n = biases[l].shape[0]
                z = fs[l, : nt * n].reshape((nt, n))
                numpy.dot(fs[l - 1, : nt * m].reshape((nt, m)), wts[l - 1], z)
                _tanh_rows(z, biases[l])
            for b in range(nt):
                acc = zero
                for r in range(n):
                    acc += fs[nl - 1, b * n + r] * g_last[r]
                y[r0 + b] = acc + b_out[0]
            # Adjoints back, from the output's constant gradient: gz = g φ' (kept per layer),
            # then g φ' W. The curvature weight g φ'' = -2 tanh · gz is formed where it is used.
            for l in range(nl - 1, -1, -1):
                n = biases[l].shape[0]
                ff = fs[l]
                gzl = gzs[l]
                if l == nl - 1:
                    for b in range(nt):
                        for r in range(n):
                            v = ff[b * n + r]
                            gzl[b * n + r] = g_last[r] * (one - v * v)
                else:
                    for q in range(nt * n):
                        v = ff[q]
                        gzl[q] = gp[q] * (one - v * v)
                if l > 0:
                    w = ws[l - 1]
                    m = w.shape[1]
                    numpy.dot(gzl[: nt * n].reshape((nt, n)), w, gp[: nt * m].reshape((nt, m)))
            h = own[:nt] if diag.shape[0] else hess[r0 : r0 + nt]
            h[:] = zero
            # Tangents forward, each layer's curvature Σ_r c_r u_ir u_jr added as it is known.
            # The first layer's tangents are the seeds (its weight's columns).
            n = biases[0].shape[0]
            ff = fs[0]
            gzl = gzs[0]
            if k <= 2:  # as in the layers below, with the seeds for every sample's u
                t0 = t[: nt * n]
                t1 = t[(k - 1) * nt * n : k * nt * n]
                for b in range(nt):
                    for r in range(n):
                        v = ff[b * n + r]
                        d1 = one - v * v
                        t0[b * n + r] = d1 * s0[r]
                        t1[b * n + r] = d1 * s1[r]
                for b in range(nt):
                    a00 = zero
                    a01 = zero
                    a11 = zero
                    for r in range(n):
                        cc = m2 * ff[b * n + r] * gzl[b * n + r]
                        a00 += cc * s00[r]
                        a01 += cc * s01[r]
                        a11 += cc * s11[r]
                    h[b, 0, 0] += a00
                    h[b, 0, k - 1] += a01 if k == 2 else zero
                    h[b, k - 1, k - 1] += a11 if k == 2 else zero
            else:
                for q in range(nt * n):
                    v = ff[q]
                    dv[q] = one - v * v
                    cb[q] = m2 * v * gzl[q]
                push_seeds(dv, cb, seeds, t, cu, h, nt, n)
            for l in range(1, nl):
                m = n
                n = biases[l].shape[0]
                numpy.dot(t[: k * nt * m].reshape((k * nt, m)), wts[l - 1], u[: k * nt * n].reshape((k * nt, n)))
                ff = fs[l]
                gzl = gzs[l]
                # k ≤ 2: two passes (the pushes, then the curvature, which only loads) instead of
                # 2k + 2. Not one pass: stores to t0 and t1 beside four loads need more runtime
                # alias checks than LLVM makes, and the loop stays scalar.
                if k <= 2:
                    u0 = u[: nt * n]
                    t0 = t[: nt * n]
                    u1 = u[(k - 1) * nt * n : k * nt * n]  # the same as u0 if k == 1
                    t1 = t[(k - 1) * nt * n : k * nt * n]
                    for q in range(nt * n):
                        v = ff[q]
                        d1 = one - v * v
                        t0[q] = d1 * u0[q]
                        t1[q] = d1 * u1[q]
                    for b in range(nt):
                        a00 = zero
                        a01 = zero
                        a11 = zero
                        for r in range(n):  # (not range(b·n, …): that form does not vectorize)
                            q = b * n + r
                            cc = m2 * ff[q] * gzl[q]
                            w0 = u0[q]
                            w1 = u1[q]
                            cw = cc * w0
                            a00 += cw * w0
                            a01 += cw * w1
                            a11 += cc * w1 * w1
                        h[b, 0, 0] += a00
                        h[b, 0, k - 1] += a01 if k == 2 else zero
                        h[b, k - 1, k - 1] += a11 if k == 2 else zero
                    continue
                for q in range(nt * n):
                    v = ff[q]
                    dv[q] = one - v * v
                    cb[q] = m2 * v * gzl[q]
                push_tangents(u, dv, cb, t, cu, h, nt, n, False)
            jacobian_and_mirror(t, g_last, jac, r0, h, nt, n)
            keep_diagonal(h, diag, r0, nt)
