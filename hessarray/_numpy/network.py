"""The compiled forward mode of a whole lowered network on NumPy, tile by tile (numba).

One call per thread runs the batch in tiles of samples, each call taking the next tile from
a shared counter. Per tile, the program (:mod:`.lowering`) runs three times: values forward
(each dense step one BLAS product, each pointwise step one loop that also keeps ``φ'`` and
``φ''``, or only its output where they are functions of it), adjoints back from the output
(one product per dense step, one loop per pointwise step that keeps its curvature weights
``c = g φ''``), and tangents forward, adding each
pointwise step's curvature ``Σ_r c_r u_ir u_jr`` to the Hessian as its input tangents ``u``
are known. A tile's buffers stay in the core's cache between a product and the loop that
reads its result, where the portable passes make a pass over memory per operation.

Tangents are direction-major, ``(k, tile, n)``, as in the portable passes: a dense step pushes
all ``k·tile`` of them by one product, and ``φ'`` scales each direction in one flat pass.

The kernel takes its views of the tile's buffers with :func:`.views.view`: numba's own slices
and reshapes each take a reference count, several per instruction and tile.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Any

import numpy

from .. import tuning
from ..engine import batching
from . import numba
from .lowering import (
    ACC,
    ACT,
    ADD,
    AFFINE,
    BIAS,
    CODE,
    COPY,
    CURVED,
    DST,
    KEEP,
    LINEAR,
    NIN,
    NOUT,
    OP,
    POINTWISE,
    SEED,
    SEEDED,
    SRC,
    VALUE,
    WEIGHT,
    Program,
    kernel_array,
)

# numba's ``np.dot`` needs SciPy's BLAS; loading it here, at import, also puts its OpenBLAS
# under the thread limit that block-parallel runs set (threadpoolctl sees the libraries loaded
# when its controller is made).
HAVE_BLAS = False
if numba is not None:
    try:
        import scipy.linalg.cython_blas  # noqa: F401

        HAVE_BLAS = True
    except ImportError:  # pragma: no cover - exercised in a subprocess by the tests
        pass

#: Parts the kernel computes: the full Hessian, its diagonal (the trace is its sum), or
#: Hessian-vector products.
FULL, DIAGONAL, HVP = 0, 1, 2


def tile_rows(prog: Program, item: int) -> int:
    """Samples per tile: :data:`~hessarray.tuning.TILE`, fewer where a tile's buffers would
    outgrow :data:`~hessarray.tuning.TILE_BYTES` (many directions, wide layers)."""
    per_sample = (
        item * prog.width * (prog.slots * (1 + prog.outputs + prog.directions) + prog.acts * (2 + prog.outputs))
    )
    rows = tuning.TILE_BYTES // max(per_sample, 1)
    return int(max(tuning.MIN_TILE, min(tuning.TILE, rows // 8 * 8)))


def run(prog: Program, x: Any, part: str, workers: int, tile: int, v: Any = None) -> tuple[Any, Any, Any]:
    """Value ``(B, m)``, Jacobian ``(B, m, k)`` and, as ``part`` says, the Hessian
    ``(B, m, k, k)`` (``"full"``), its diagonal ``(B, m, k)`` (``"diag"``) or the products
    ``H v`` ``(B, m, p, k)`` with ``v`` ``(B, p, k)`` (``"hvp"``), in the program's ``k``
    directions, on up to ``workers`` threads."""
    batch = x.shape[0]
    dtype = x.dtype
    m, k = prog.outputs, prog.directions
    full = part == "full"
    mode = {"full": FULL, "diag": DIAGONAL, "hvp": HVP}[part]
    y = numpy.empty((batch, m), dtype)
    jac = numpy.empty((batch, m, k), dtype)
    if mode == HVP:
        v = kernel_array(v, dtype)
        hess = numpy.empty((batch, m, v.shape[1], k), dtype)
    else:
        v = numpy.zeros((0, 1, 1), dtype)
        hess = numpy.empty((batch if full else 0, m, k, k), dtype)
    diag = numpy.empty((batch if mode == DIAGONAL else 0, m, k), dtype)
    if prog.kernel_args is None:  # made once per program (a remembered one: once per model)
        size = _tuple_size(max(len(prog.weights), len(prog.biases)))
        prog.kernel_args = (_padded(prog.weights, size), _padded(prog.biases, size))
    args = (
        kernel_array(x),
        prog.ops,
        prog.fparams,
        *prog.kernel_args,
        *_transposes(prog, min(batch, tile) * k),
        prog.seed,
        prog.g_last,
        prog.b_out,
        prog.target,
        prog.end,
        prog.final,
        prog.final_value,
        prog.final_width,
        prog.slots,
        prog.acts,
        prog.width,
        y,
        jac,
        hess,
        diag,
        v,
        mode,
    )
    counter = numpy.zeros(1, numpy.int64)  # the first sample no thread has claimed
    workers = min(workers, -(-batch // tile))
    if workers > 1:  # each thread gets one BLAS thread
        batching.run_shared(lambda: _network(*args, tile, counter), workers)
    else:
        # OpenBLAS splits a product over its threads from M·N·K > 2¹⁸ on: on a tile that costs
        # more than it gains. A serial call gets the one-thread limit here too.
        big = min(batch, tile) * max(k, prog.outputs) * prog.width * prog.width > tuning.BLAS_THREADED_WORK
        with batching.serial_blas() if big else nullcontext():
            _network(*args, tile, counter)
    return y, jac, diag if mode == DIAGONAL else hess


def _transposes(prog: Program, rows: int) -> tuple:
    """The weights' transposes, C-contiguous, made per call (the layers' arrays are taken as
    they are), where a tile's products have :data:`~hessarray.tuning.TRANSPOSED_ROWS` rows or
    more: numba's product with a transposed view is slower there. Else the weights themselves,
    which the kernel reads transposed."""
    ws = prog.kernel_args[0]
    if rows < tuning.TRANSPOSED_ROWS:
        return ws, False
    # (A last dense step folded into g_last has no product, and the padding none.)
    products = len(prog.weights)
    return tuple(
        numpy.ascontiguousarray(w.T) if at < products and at != prog.folded else w for at, w in enumerate(ws)
    ), True


def _tuple_size(n: int) -> int:
    """The length the kernel's tuples of arrays are padded to: numba compiles a kernel apart
    for each length, so lengths come in powers of two, at least 8 (a few compilations for all
    depths, not one per depth)."""
    return max(8, 1 << (n - 1).bit_length())


def _padded(items: list, size: int) -> tuple:
    """``items`` as a tuple of ``size`` arrays, the missing ones a small array of their kind
    (never read: the program indexes only its own)."""
    return (*items, *([_filler(items[0].ndim, items[0].dtype)] * (size - len(items))))


@functools.lru_cache(maxsize=16)
def _filler(ndim: int, dtype: Any) -> Any:
    return numpy.zeros((1,) * ndim, dtype)


if numba is not None and HAVE_BLAS:
    from numba.core import types as nbtypes
    from numba.extending import intrinsic

    from ..tuning import LOOP_K
    from .pointwise import adjoint_rows, output_rows, pointwise_rows, scale_rows, seed_rows, slope_rows
    from .views import view

    # Reassociation vectorizes the sums (NaN and inf keep their IEEE behaviour).
    _jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
    # The per-sample helpers inlined where they are called: a call per sample costs as much as
    # its loop.
    _inline = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"}, inline="always")

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

    @_inline
    def _pairs2(c, u0, u1):  # pragma: no cover - compiled
        """``Σ c u0 u0``, ``Σ c u0 u1``, ``Σ c u1 u1`` in one pass (a function of its own: within
        :func:`_curvature`'s many branches LLVM vectorizes this loop less well)."""
        zero = c.dtype.type(0)
        a00 = zero
        a01 = zero
        a11 = zero
        for r in range(c.shape[0]):
            cr = c[r]
            w0 = u0[r]
            w1 = u1[r]
            c0 = cr * w0
            a00 += c0 * w0
            a01 += c0 * w1
            a11 += cr * w1 * w1
        return a00, a01, a11

    # Loops of their own (not inlined), apart from the kernel's many branches, where LLVM's
    # vectorizer sees less (as for _pairs2).

    @_jit
    def _first_layer(xt, w0t, out):  # pragma: no cover - compiled
        """``out = xt w0t`` by loops, for few inputs (a product of depth ``nin`` is slower)."""
        zero = out.dtype.type(0)
        for b in range(out.shape[0]):
            for r in range(out.shape[1]):
                out[b, r] = zero
            for i in range(xt.shape[1]):
                xi = xt[b, i]
                for r in range(out.shape[1]):
                    out[b, r] += xi * w0t[i, r]

    @_jit
    def _three_pairs(cm, pairs, po):  # pragma: no cover - compiled
        """``po[row, q] = Σ_r cm[row, r] pairs[q, r]`` for the three pairs of two seeds."""
        zero = cm.dtype.type(0)
        p0 = pairs[0]
        p1 = pairs[1]
        p2 = pairs[2]
        for row in range(cm.shape[0]):
            a0 = zero
            a1 = zero
            a2 = zero
            for r in range(cm.shape[1]):
                cr = cm[row, r]
                a0 += cr * p0[r]
                a1 += cr * p1[r]
                a2 += cr * p2[r]
            po[row, 0] = a0
            po[row, 1] = a1
            po[row, 2] = a2

    @_jit
    def _two_seeds(dm, s, t0, t1):  # pragma: no cover - compiled
        """``t0 = dm s[0]``, ``t1 = dm s[1]`` (each row of ``dm`` by the seeds, shared by all samples)."""
        s0 = s[0]
        s1 = s[1]
        for b in range(dm.shape[0]):
            for r in range(dm.shape[1]):
                dr = dm[b, r]
                t0[b, r] = dr * s0[r]
                t1[b, r] = dr * s1[r]

    @_jit
    def _linear_end(vm, g_last, b_out, gm, y, r0, adjoint):  # pragma: no cover - compiled
        """``y = v g_lastᵀ + b_out``, and where ``adjoint``, each output's adjoint ``g_last``
        (rows ``b·m + o``)."""
        m = g_last.shape[0]
        for b in range(vm.shape[0]):
            for o in range(m):
                acc = b_out[o]
                for r in range(vm.shape[1]):
                    acc += vm[b, r] * g_last[o, r]
                y[r0 + b, o] = acc
                if adjoint:
                    go = gm[b * m + o]
                    for r in range(vm.shape[1]):
                        go[r] = g_last[o, r]

    @_jit
    def _fresh_adjoint(g0, d1, d2, g, curved):  # pragma: no cover - compiled
        """The last pointwise step's adjoint, one output: ``d2 ← g0 φ''`` (where ``curved``),
        ``g ← g0 φ'``, ``g0`` ``(1, n)`` the output's gradient for every sample."""
        for b in range(g.shape[0]):
            for r in range(g.shape[1]):
                gq = g0[0, r]
                if curved:
                    d2[b, r] *= gq
                g[b, r] = gq * d1[b, r]

    @_jit
    def _jacobian(tm, fm, jac, r0, nt, per_sample):  # pragma: no cover - compiled
        """``jac[r0 + b, o, i] = Σ_r tm[i·nt + b, r] fm[row, r]``, ``row`` the sample where
        ``fm`` is per sample (the squared error's adjoint), else the output ``o``."""
        zero = tm.dtype.type(0)
        m = jac.shape[1]
        k = jac.shape[2]
        for b in range(nt):
            for o in range(m):
                fr = fm[b if per_sample else o]
                for i in range(k):
                    ti = tm[i * nt + b]
                    acc = zero
                    for r in range(tm.shape[1]):
                        acc += ti[r] * fr[r]
                    jac[r0 + b, o, i] = acc

    @_jit
    def _curvature_hvp(ubuf, urow, cbuf, crow, hv, v, r0, nt, m, k, n, w):  # pragma: no cover - compiled
        """Add ``Σ_r c[b, o, r] (Σ_j v[b, p, j] u[j, b, r]) u[i, b, r]`` to ``hv[b, o, p, i]``: the
        curvature applied to each sample's vectors, ``2 p k n`` multiply-adds per sample and
        output instead of the Hessian's ``k² n / 2``. ``u``, ``c``: rows ``urow``, ``crow`` of the
        kernel's buffers ``ubuf``, ``cbuf`` (:func:`.views.view`); ``w``: scratch of ``2 n`` (1, …)."""
        zero = ubuf.dtype.type(0)
        stride = nt * n
        wv = view(w, 0, 0, (n,))
        cw = view(w, 0, n, (n,))
        for b in range(nt):
            for p in range(v.shape[1]):
                vb = v[r0 + b, p]
                for r in range(n):
                    wv[r] = zero
                for j in range(k):
                    vj = vb[j]
                    uj = view(ubuf, urow, j * stride + b * n, (n,))
                    for r in range(n):
                        wv[r] += vj * uj[r]
                for o in range(m):
                    cb = view(cbuf, crow, (b * m + o) * n, (n,))
                    for r in range(n):
                        cw[r] = cb[r] * wv[r]
                    hb = hv[r0 + b, o, p]
                    for i in range(k):
                        ui = view(ubuf, urow, i * stride + b * n, (n,))
                        acc = zero
                        for r in range(n):
                            acc += cw[r] * ui[r]
                        hb[i] += acc

    @_jit
    def _curvature(ubuf, urow, cbuf, crow, h, diag, r0, nt, m, k, n, full, hk, cu):  # pragma: no cover - compiled
        """Add ``Σ_r c[b, o, r] u[b, i, r] u[b, j, r]`` to the tile's Hessians (``i ≤ j``), or
        its ``i = j`` terms to their diagonals: for one to three directions every pair in one
        pass, for more four rows per pass, beyond :data:`~hessarray.tuning.LOOP_K` one
        ``(k, n) @ (n, k)`` BLAS product per sample. Tangents ``u`` direction-major,
        ``(k, nt, n)``, and ``c``: rows ``urow``, ``crow`` of the kernel's buffers ``ubuf``, ``cbuf``
        (:func:`.views.view`); ``cu``: scratch of ``3 k n`` (1, …)."""
        zero = ubuf.dtype.type(0)
        stride = nt * n  # direction i of sample b: u[i·stride + b·n : … + n]
        if k <= 2 and m == 1:  # the common case, PINN-like: both directions in one pass
            # (tile-wide 2-D views indexed by loop variables: no view made per sample)
            u0 = view(ubuf, urow, 0, (nt, n))
            u1 = view(ubuf, urow, (k - 1) * stride, (nt, n))
            cm = view(cbuf, crow, 0, (nt, n))
            for b in range(nt):
                a00 = zero
                a01 = zero
                a11 = zero
                for r in range(n):
                    cr = cm[b, r]
                    w0 = u0[b, r]
                    w1 = u1[b, r]
                    c0 = cr * w0
                    a00 += c0 * w0
                    a01 += c0 * w1
                    a11 += cr * w1 * w1
                if full:
                    h[r0 + b, 0, 0, 0] += a00
                    if k == 2:
                        h[r0 + b, 0, 0, 1] += a01
                        h[r0 + b, 0, 1, 1] += a11
                else:
                    diag[r0 + b, 0, 0] += a00
                    if k == 2:
                        diag[r0 + b, 0, 1] += a11
            return
        # A sample's rows are gathered into cu[k n : 2 k n] where read more than once.
        for b in range(nt):
            if full and k > 3:
                for i in range(k):
                    src = view(ubuf, urow, i * stride + b * n, (n,))
                    dst = view(cu, 0, (k + i) * n, (n,))
                    for r in range(n):
                        dst[r] = src[r]
            for o in range(m):
                cb = view(cbuf, crow, (b * m + o) * n, (n,))
                if not full:
                    db = diag[r0 + b, o]
                    for i in range(k):
                        ui = view(ubuf, urow, i * stride + b * n, (n,))
                        acc = zero
                        for r in range(n):
                            acc += cb[r] * ui[r] * ui[r]
                        db[i] += acc
                    continue
                hb = h[r0 + b, o]
                if k <= 2:  # every pair in one pass (row 0 twice where k = 1)
                    u0 = view(ubuf, urow, b * n, (n,))
                    u1 = view(ubuf, urow, (k - 1) * stride + b * n, (n,))
                    a00, a01, a11 = _pairs2(cb, u0, u1)
                    hb[0, 0] += a00
                    if k == 2:
                        hb[0, 1] += a01
                        hb[1, 1] += a11
                    continue
                if k == 3:  # every pair in one pass
                    u0 = view(ubuf, urow, b * n, (n,))
                    u1 = view(ubuf, urow, stride + b * n, (n,))
                    u2 = view(ubuf, urow, 2 * stride + b * n, (n,))
                    a00 = zero
                    a01 = zero
                    a02 = zero
                    a11 = zero
                    a12 = zero
                    a22 = zero
                    for r in range(n):
                        cr = cb[r]
                        w0 = u0[r]
                        w1 = u1[r]
                        w2 = u2[r]
                        c0 = cr * w0
                        c1 = cr * w1
                        a00 += c0 * w0
                        a01 += c0 * w1
                        a02 += c0 * w2
                        a11 += c1 * w1
                        a12 += c1 * w2
                        a22 += cr * w2 * w2
                    hb[0, 0] += a00
                    hb[0, 1] += a01
                    hb[0, 2] += a02
                    hb[1, 1] += a11
                    hb[1, 2] += a12
                    hb[2, 2] += a22
                    continue
                if k > LOOP_K:
                    um = view(cu, 0, k * n, (k, n))
                    cm = view(cu, 0, 2 * k * n, (k, n))
                    for i in range(k):
                        ci = cm[i]
                        ui = um[i]
                        for r in range(n):
                            ci[r] = cb[r] * ui[r]
                    numpy.dot(cm, um.T, hk)
                    for i in range(k):
                        for j in range(i, k):
                            hb[i, j] += hk[i, j]
                    continue
                cr = view(cu, 0, 0, (n,))
                for i in range(k):
                    ui = view(cu, 0, (k + i) * n, (n,))
                    for r in range(n):
                        cr[r] = cb[r] * ui[r]
                    j = i
                    while j + 3 < k:  # four rows per pass: cu read once for them
                        v0 = view(cu, 0, (k + j) * n, (n,))
                        v1 = view(cu, 0, (k + j + 1) * n, (n,))
                        v2 = view(cu, 0, (k + j + 2) * n, (n,))
                        v3 = view(cu, 0, (k + j + 3) * n, (n,))
                        s0 = zero
                        s1 = zero
                        s2 = zero
                        s3 = zero
                        for r in range(n):
                            w = cr[r]
                            s0 += w * v0[r]
                            s1 += w * v1[r]
                            s2 += w * v2[r]
                            s3 += w * v3[r]
                        hb[i, j] += s0
                        hb[i, j + 1] += s1
                        hb[i, j + 2] += s2
                        hb[i, j + 3] += s3
                        j += 4
                    while j < k:
                        v0 = view(cu, 0, (k + j) * n, (n,))
                        s0 = zero
                        for r in range(n):
                            s0 += cr[r] * v0[r]
                        hb[i, j] += s0
                        j += 1

    @_jit
    def _network(
        x,
        ops,
        fparams,
        ws,
        biases,
        wts,
        transposed,
        seed,
        g_last,
        b_out,
        target,
        end,
        final,
        final_value,
        nf,
        nslots,
        nacts,
        width,
        y,
        jac,
        hess,
        diag,
        vdirs,
        mode,
        tile,
        counter,
    ):  # pragma: no cover - compiled
        # Inner loops index slices by their own range variable only: an index computed from
        # offsets makes numba check it for negative wraparound, and the loop stays slow.
        batch = x.shape[0]
        m = y.shape[1]
        k = jac.shape[2]
        full = mode == FULL
        hvp = mode == HVP
        n_ops = ops.shape[0]
        dt = x.dtype
        zero = dt.type(0)
        # The tile's buffers, used in every pass of the loop below and so held until it ends: the
        # kernel's views of them (.views.view) hold no reference.
        vals = numpy.empty((nslots + nacts, tile * width), dt)  # the slots', then kept outputs
        grads = numpy.empty((nslots, tile * m * width), dt)
        tans = numpy.empty((nslots, tile * k * width), dt)
        d1s = numpy.empty((nacts, tile * width), dt)
        d2s = numpy.empty((nacts, tile * width), dt)
        # The curvature weights c = g φ'': with one output, written over φ'' (not read again).
        cs = d2s if m == 1 else numpy.empty((nacts, tile * m * width), dt)
        # (Scratch rows as 2-D buffers: :func:`.views.view` takes views of those.)
        scratch2 = numpy.empty((1, tile * max(m, k) * width), dt)
        scratch = scratch2[0]
        gfin = numpy.empty((1, tile * nf), dt)  # the adjoint at the end (squared error)
        cu = numpy.empty((1, 3 * k * width), dt)
        hk = numpy.empty((k, k), dt)
        # The seed's directions as rows, s[i] (k, n); made once per call, as the weights' own
        # arrays are taken as they are.
        s = numpy.ascontiguousarray(seed.T)
        # The first dense layer's Wᵀ where its few inputs are a loop (below).
        first = -1
        for p in range(n_ops):
            if ops[p, OP] == AFFINE and ops[p, SRC] < 0 and ops[p, NIN] <= 16:
                first = ops[p, WEIGHT]
        w0t = numpy.ascontiguousarray(ws[max(first, 0)].T)
        # The seeded step's products S_ir S_jr of its seeds' pairs i ≤ j (the diagonal: i = j),
        # so that its curvature is one product c @ pairsᵀ per tile; made once per call.
        seeded_at = False
        for p in range(n_ops):
            if ops[p, SEEDED] == 1:
                seeded_at = True
        npairs = 1
        pairs = numpy.zeros((1, 1), dt)
        if seeded_at:
            npairs = k * (k + 1) // 2 if full else k
            pairs = numpy.empty((npairs, s.shape[1]), dt)
            q = 0
            for i in range(k):
                for j in range(i, k if full else i + 1):
                    for r in range(s.shape[1]):
                        pairs[q, r] = s[i, r] * s[j, r]
                    q += 1
        pair_out = numpy.empty((1, tile * m * npairs), dt)
        # One output, and a last pointwise step on the final slot: that step's adjoint reads the
        # output's gradient g_last itself, and the end writes no copy of it per sample.
        last = n_ops - 1
        fresh = end == LINEAR and m == 1 and last >= 0 and ops[last, OP] == POINTWISE and ops[last, SRC] == final
        while True:  # the next unclaimed tile, until none is left
            r0 = _claim(counter, tile)
            if r0 >= batch:
                break
            nt = min(tile, batch - r0)
            xt = x[r0 : r0 + nt]
            # -- values forward ------------------------------------------------------------
            for p in range(n_ops):
                op, dst, src, nin, nout = ops[p, OP], ops[p, DST], ops[p, SRC], ops[p, NIN], ops[p, NOUT]
                vsrc = ops[p, VALUE]
                if op == AFFINE:
                    out = view(vals, dst, 0, (nt, nout))
                    if src < 0 and ops[p, WEIGHT] == first:  # few inputs: a loop beats a product of depth nin
                        _first_layer(xt, w0t, out)
                    elif src < 0 and transposed:
                        numpy.dot(xt, wts[ops[p, WEIGHT]], out)
                    elif src < 0:
                        numpy.dot(xt, ws[ops[p, WEIGHT]].T, out)
                    elif transposed:
                        numpy.dot(view(vals, vsrc, 0, (nt, nin)), wts[ops[p, WEIGHT]], out)
                    else:
                        numpy.dot(view(vals, vsrc, 0, (nt, nin)), ws[ops[p, WEIGHT]].T, out)
                    if ops[p, BIAS] >= 0:
                        bias = biases[ops[p, BIAS]]
                        for b in range(nt):
                            for r in range(nout):
                                out[b, r] += bias[r]
                elif op == POINTWISE:
                    a = ops[p, ACT]
                    q = nt * nout
                    if ops[p, KEEP] >= 0:  # φ' and φ'' come from the kept output
                        output_rows(
                            ops[p, CODE],
                            fparams[p, 0],
                            view(vals, vsrc, 0, (nt, nout)),
                            biases[ops[p, BIAS]],
                            view(vals, ops[p, KEEP], 0, (nt, nout)),
                        )
                        continue
                    pointwise_rows(
                        ops[p, CODE],
                        fparams[p, 0],
                        view(vals, src, 0, (nt, nout)),
                        biases[ops[p, BIAS]],
                        view(d1s, a, 0, (nt, nout)),
                        view(d2s, a, 0, (nt, nout)),
                        ops[p, CURVED] != 0,
                    )
                elif op == ADD:
                    h = dt.type(fparams[p, 0])
                    vd = view(vals, dst, 0, (nt * nout,))
                    vs = view(vals, vsrc, 0, (nt * nout,))
                    for q in range(nt * nout):
                        vd[q] += h * vs[q]
                else:  # COPY
                    vd = view(vals, dst, 0, (nt * nin,))
                    if src < 0:
                        vm = view(vals, dst, 0, (nt, nin))
                        for b in range(nt):
                            for r in range(nin):
                                vm[b, r] = xt[b, r]
                    else:
                        vs = view(vals, vsrc, 0, (nt * nin,))
                        for q in range(nt * nin):
                            vd[q] = vs[q]
            if end == LINEAR:
                _linear_end(
                    view(vals, final_value, 0, (nt, nf)),
                    g_last,
                    b_out,
                    view(grads, final, 0, (nt * m, nf)),
                    y,
                    r0,
                    not fresh,
                )
            else:  # mean squared error: g = (2/n)(v - target), its Hessian (2/n) I
                scale = dt.type(2.0 / nf)
                for b in range(nt):
                    tb = target[r0 + b] if target.shape[0] > 1 else target[0]
                    vb = view(vals, final_value, b * nf, (nf,))
                    gb = view(grads, final, b * nf, (nf,))
                    fb = view(gfin, 0, b * nf, (nf,))
                    acc = zero
                    for r in range(nf):
                        e = vb[r] - tb[r]
                        acc += e * e
                        fb[r] = scale * e
                        gb[r] = scale * e
                    y[r0 + b, 0] = acc / dt.type(nf)
            # -- adjoints back -------------------------------------------------------------
            for p in range(n_ops - 1, -1, -1):
                op, dst, src, nin, nout = ops[p, OP], ops[p, DST], ops[p, SRC], ops[p, NIN], ops[p, NOUT]
                if op == AFFINE:
                    if src < 0:
                        continue
                    gd = view(grads, dst, 0, (nt * m, nout))
                    if ops[p, ACC]:
                        gs = view(grads, src, 0, (nt * m * nin,))
                        tmp = view(scratch2, 0, 0, (nt * m * nin,))
                        numpy.dot(gd, ws[ops[p, WEIGHT]], view(scratch2, 0, 0, (nt * m, nin)))
                        for q in range(nt * m * nin):
                            gs[q] += tmp[q]
                    else:
                        numpy.dot(gd, ws[ops[p, WEIGHT]], view(grads, src, 0, (nt * m, nin)))
                elif op == POINTWISE:
                    a = ops[p, ACT]
                    curved = ops[p, CURVED] != 0
                    keep = ops[p, KEEP]
                    if keep >= 0:
                        adjoint_rows(
                            ops[p, CODE],
                            fparams[p, 0],
                            view(vals, keep, 0, (nt, nout)),
                            view(grads, src, 0, (nt, m, nout)),
                            view(cs, a, 0, (nt, m, nout)),
                            curved,
                            g_last,
                            fresh and p == last,
                        )
                        continue
                    if fresh and p == last:
                        _fresh_adjoint(
                            g_last,
                            view(d1s, a, 0, (nt, nout)),
                            view(d2s, a, 0, (nt, nout)),
                            view(grads, src, 0, (nt, nout)),
                            curved,
                        )
                        continue
                    if m == 1:  # one pass over the tile (c over φ'')
                        d1 = view(d1s, a, 0, (nt * nout,))
                        d2 = view(d2s, a, 0, (nt * nout,))
                        gs = view(grads, src, 0, (nt * nout,))
                        if curved:
                            for q in range(nt * nout):
                                gq = gs[q]
                                d2[q] *= gq
                                gs[q] = gq * d1[q]
                        else:
                            for q in range(nt * nout):
                                gs[q] *= d1[q]
                        continue
                    for b in range(nt):
                        d1 = view(d1s, a, b * nout, (nout,))
                        d2 = view(d2s, a, b * nout, (nout,))
                        for o in range(m):
                            lo = (b * m + o) * nout
                            gs = view(grads, src, lo, (nout,))
                            if curved:
                                cc = view(cs, a, lo, (nout,))
                                for r in range(nout):
                                    cc[r] = gs[r] * d2[r]
                            for r in range(nout):
                                gs[r] *= d1[r]
                elif op == ADD:
                    h = dt.type(fparams[p, 0])
                    gd = view(grads, dst, 0, (nt * m * nout,))
                    gs = view(grads, src, 0, (nt * m * nout,))
                    for q in range(nt * m * nout):
                        gs[q] = h * gd[q]
                elif src >= 0:  # COPY of a slot
                    gd = view(grads, dst, 0, (nt * m * nin,))
                    gs = view(grads, src, 0, (nt * m * nin,))
                    if ops[p, ACC]:
                        for q in range(nt * m * nin):
                            gs[q] += gd[q]
                    else:
                        for q in range(nt * m * nin):
                            gs[q] = gd[q]
            # -- tangents forward, with the curvature ----------------------------------------
            if full or hvp:
                hess[r0 : r0 + nt] = zero
            else:
                diag[r0 : r0 + nt] = zero
            for p in range(n_ops):
                op, dst, src, nin, nout = ops[p, OP], ops[p, DST], ops[p, SRC], ops[p, NIN], ops[p, NOUT]
                if op == AFFINE or (op == COPY and src < 0):
                    if src >= 0 and transposed:
                        numpy.dot(
                            view(tans, src, 0, (nt * k, nin)),
                            wts[ops[p, WEIGHT]],
                            view(tans, dst, 0, (nt * k, nout)),
                        )
                    elif src >= 0:
                        numpy.dot(
                            view(tans, src, 0, (nt * k, nin)),
                            ws[ops[p, WEIGHT]].T,
                            view(tans, dst, 0, (nt * k, nout)),
                        )
                    elif ops[p, SEED] >= 0:  # the input's tangents, the same for every sample
                        for i in range(k):
                            si = s[i]
                            for b in range(nt):
                                lo = (i * nt + b) * nout
                                ti = view(tans, dst, lo, (nout,))
                                for r in range(nout):
                                    ti[r] = si[r]
                elif op == POINTWISE:
                    a = ops[p, ACT]
                    n = nout
                    seeded = ops[p, SEEDED]
                    if hvp and seeded != 0:  # the seeds formed per sample: H v needs no pairs
                        for i in range(k):
                            for b in range(nt):
                                tb = view(tans, src, (i * nt + b) * n, (n,))
                                if seeded == 1:
                                    si = s[i]
                                    for r in range(n):
                                        tb[r] = si[r]
                                else:
                                    for r in range(n):
                                        tb[r] = zero
                                    tb[i] = dt.type(1)
                        seeded = 0
                    keep = ops[p, KEEP]
                    if hvp and ops[p, CURVED] != 0:
                        _curvature_hvp(
                            tans,
                            src,
                            cs,
                            a,
                            hess,
                            vdirs,
                            r0,
                            nt,
                            m,
                            k,
                            n,
                            cu,
                        )
                    elif ops[p, CURVED] != 0:
                        if seeded == 1 and npairs == 3:  # k = 2: the three pairs in one pass
                            _three_pairs(view(cs, a, 0, (nt * m, n)), pairs, view(pair_out, 0, 0, (nt * m, 3)))
                        elif seeded == 1 and npairs <= 6:  # few pairs: a dot product each per sample
                            for row in range(nt * m):
                                cr = view(cs, a, row * n, (n,))
                                pr = view(pair_out, 0, row * npairs, (npairs,))
                                for q in range(npairs):
                                    pq = pairs[q]
                                    acc = zero
                                    for r in range(n):
                                        acc += cr[r] * pq[r]
                                    pr[q] = acc
                        elif seeded == 1:  # one product for the tile: c @ (S_i S_j pairs)ᵀ
                            numpy.dot(
                                view(cs, a, 0, (nt * m, n)),
                                pairs.T,
                                view(pair_out, 0, 0, (nt * m, npairs)),
                            )
                        if seeded == 1:
                            po = view(pair_out, 0, 0, (nt * m, npairs))
                            for b in range(nt):
                                for o in range(m):
                                    row = b * m + o
                                    if full:
                                        q = 0
                                        for i in range(k):
                                            for j in range(i, k):
                                                hess[r0 + b, o, i, j] += po[row, q]
                                                q += 1
                                    else:
                                        for i in range(k):
                                            diag[r0 + b, o, i] += po[row, i]
                        elif seeded == 2:  # identity seeds: the curvature is diag(c)
                            for b in range(nt):
                                for o in range(m):
                                    lo = (b * m + o) * n
                                    cb = view(cs, a, lo, (n,))
                                    for i in range(k):
                                        if full:
                                            hess[r0 + b, o, i, i] += cb[i]
                                        else:
                                            diag[r0 + b, o, i] += cb[i]
                        else:
                            _curvature(
                                tans,
                                src,
                                cs,
                                a,
                                hess,
                                diag,
                                r0,
                                nt,
                                m,
                                k,
                                n,
                                full,
                                hk,
                                cu,
                            )
                    if keep >= 0 and seeded == 0:
                        scale_rows(
                            ops[p, CODE], fparams[p, 0], view(vals, keep, 0, (nt * n,)), view(tans, src, 0, (k, nt * n))
                        )
                        continue
                    if seeded == 1 and k == 2 and keep >= 0:  # both directions in one pass, φ' from φ
                        seed_rows(
                            ops[p, CODE],
                            fparams[p, 0],
                            view(vals, keep, 0, (nt, n)),
                            s,
                            view(tans, src, 0, (nt, n)),
                            view(tans, src, nt * n, (nt, n)),
                        )
                        continue
                    if seeded == 1 and k == 2:  # both directions in one pass
                        _two_seeds(
                            view(d1s, a, 0, (nt, n)), s, view(tans, src, 0, (nt, n)), view(tans, src, nt * n, (nt, n))
                        )
                        continue
                    d1buf, d1row = (scratch2, 0) if keep >= 0 else (d1s, a)  # φ', derived or kept
                    d1 = view(d1buf, d1row, 0, (nt * n,))
                    if keep >= 0:
                        slope_rows(ops[p, CODE], fparams[p, 0], view(vals, keep, 0, (nt * n,)), d1)
                    if seeded == 0 and k == 2:  # both directions in one pass: d1 read once
                        t0 = view(tans, src, 0, (nt * n,))
                        t1 = view(tans, src, nt * n, (nt * n,))
                        for q in range(nt * n):
                            dq = d1[q]
                            t0[q] *= dq
                            t1[q] *= dq
                        continue
                    for i in range(k):
                        ti = view(tans, src, i * nt * n, (nt * n,))
                        if seeded == 0:
                            for q in range(nt * n):
                                ti[q] *= d1[q]
                            continue
                        for b in range(nt):
                            tb = view(tans, src, (i * nt + b) * n, (n,))
                            db = view(d1buf, d1row, b * n, (n,))
                            if seeded == 1:
                                si = s[i]
                                for r in range(n):
                                    tb[r] = db[r] * si[r]
                            else:
                                for r in range(n):
                                    tb[r] = zero
                                tb[i] = db[i]
                elif op == ADD:
                    h = dt.type(fparams[p, 0])
                    td = view(tans, dst, 0, (nt * k * nout,))
                    ts = view(tans, src, 0, (nt * k * nout,))
                    for q in range(nt * k * nout):
                        td[q] += h * ts[q]
                else:  # COPY of a slot
                    td = view(tans, dst, 0, (nt * k * nin,))
                    ts = view(tans, src, 0, (nt * k * nin,))
                    for q in range(nt * k * nin):
                        td[q] = ts[q]
            # -- the Jacobian, the end's own curvature, the lower triangle ------------------------
            fm = g_last if end == LINEAR else view(gfin, 0, 0, (nt, nf))
            _jacobian(view(tans, final, 0, (k * nt, nf)), fm, jac, r0, nt, end != LINEAR)  # row i·nt + b
            if end != LINEAR:
                scale = dt.type(2.0 / nf)
                for q in range(nt * nf):
                    scratch[q] = scale
                if hvp:
                    _curvature_hvp(tans, final, scratch2, 0, hess, vdirs, r0, nt, 1, k, nf, cu)
                else:
                    _curvature(tans, final, scratch2, 0, hess, diag, r0, nt, 1, k, nf, full, hk, cu)
            if full:
                for b in range(nt):
                    for o in range(m):
                        for i in range(k):
                            for j in range(i):
                                hess[r0 + b, o, i, j] = hess[r0 + b, o, j, i]
