"""Fused NumPy kernels (numba), a fast path beside the portable array-API code.

NumPy runs one pass over memory per operation. For an elementwise layer in the forward
mode the portable code makes about eight: ``φ'·t`` for each direction, ``c = g φ''``,
``t c`` and the ``k²`` dot products of the curvature term. For a block of 1024 samples of
width 64 in float64 (``k = 2``) that is ~5 MB of traffic for ~0.9 MFLOP; one loop over the
samples that keeps ``c`` and the running sums in registers reads ``φ'``, ``φ''``, ``g`` and
``t`` once and writes ``φ'·t`` once (~2.6 MB). Their effect on the PINN-like benchmark is
in ``docs/benchmarks.md``.

They are used only when every operand is a C-contiguous NumPy float32/float64 array, the
optional dependency ``numba`` is installed (the ``fast`` extra), and ``HESSARRAY_NUMBA`` was not
``0`` at import. Everything else, and every other backend, takes the portable path, which the tests
compare them against. The loops keep IEEE semantics for NaN and infinity (only
reassociation and fused multiply-adds are allowed, so sums are vectorized): results agree
with the portable path to rounding.
"""

from __future__ import annotations

import os
from typing import Any

import numpy

from .tuning import MAX_K, RESIDUAL_WORK

try:  # optional: the ``fast`` extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def _from_environment() -> bool:
    value = os.environ.get("HESSARRAY_NUMBA", "1").strip().lower()
    return numba is not None and value not in ("0", "false", "no", "off")


#: Whether the fused kernels may run: numba is importable and ``HESSARRAY_NUMBA`` was not
#: ``0``/``false``/``no``/``off`` when hessarray was imported. (Read once: a check per call
#: would cost more than the kernel on small blocks. Tests switch it by assignment.)
ENABLED = _from_environment()


def _plain(*arrays: Any) -> bool:
    """C-contiguous NumPy arrays of one float dtype (so no broadcast views either)."""
    first = arrays[0]
    if type(first) is not numpy.ndarray or first.dtype not in _FLOATS:  # type first: no
        return False  # comparison of another library's dtype with NumPy's
    dtype = first.dtype
    for a in arrays:
        if type(a) is not numpy.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
            return False
    return True


def push_curvature(df: Any, d2f: Any, g: Any, t: Any) -> tuple[Any, Any] | None:
    """Tangents out ``φ'·t`` ``(k, B, n)`` and the curvature term ``(B, m, k, k)``,
    ``Σ_r t[i, b, r] g[b, o, r] φ''[b, r] t[j, b, r]``, in one pass over the samples.

    ``None`` where the loop does not apply: switched off, ``k > MAX_K``, or operands that
    are not C-contiguous NumPy arrays of one float dtype (broadcast tangents, shared by all
    samples, are not: the engine contracts them with one GEMM instead). The check is part
    of the call: on small blocks a separate one would cost as much as the loop.
    """
    if not (ENABLED and t.ndim == 3 and t.shape[0] <= MAX_K and g.ndim == 3 and _plain(df, d2f, g, t)):
        return None
    k, batch, _ = t.shape
    t_out = numpy.empty(t.shape, t.dtype)
    term = numpy.empty((batch, g.shape[1], k, k), t.dtype)
    _push_curvature(df, d2f, g, t, t_out, term, None, t.dtype.type(1))
    return t_out, term


def tanh_derivatives(f: Any) -> tuple[Any, Any] | None:
    """``1 - f²`` and ``-2 f (1 - f²)`` from ``f = tanh z`` in one pass (four in NumPy).

    ``None`` where the loop does not apply (switched off, or ``f`` is not a C-contiguous
    NumPy float array).
    """
    if not (ENABLED and _plain(f)):
        return None
    df = numpy.empty(f.shape, f.dtype)
    d2f = numpy.empty(f.shape, f.dtype)
    one = f.dtype.type(1)
    if f.ndim == 2:  # activations are (B, n): no reshaped views
        _tanh_derivatives(f, df, d2f, None, one, None)
    else:  # anything else as one row
        _tanh_derivatives(f.reshape(1, -1), df.reshape(1, -1), d2f.reshape(1, -1), None, one, None)
    return df, d2f


def symmetrize(h: Any) -> bool:
    """``h ← (h + hᵀ) / 2`` over the last two axes, in place, for a C-contiguous NumPy float
    array; ``False`` (nothing done) where the loop does not apply.

    One pass over ``h``, half of it read across columns; NumPy needs a transposed copy and
    two more passes.
    """
    if not (ENABLED and h.ndim >= 2 and _plain(h) and h.flags.writeable):
        return False
    n = h.shape[-1]
    _symmetrize(h.reshape(-1, n, n))
    return True


def residual_tanh_forward(x: Any, w: Any, b: Any, h: float) -> tuple[Any, ...] | None:
    """``z = x Wᵀ + b``, ``f = tanh z``, ``φ' = 1 - f²``, ``φ'' = -2 f φ'`` and
    ``y = x + h f`` for a small block (``x`` ``(B, n)``, ``W`` ``(n, n)``, ``b`` ``(n,)`` or
    None): one loop for ``z``, NumPy's vectorized tanh (numba's calls the scalar C function),
    one loop for the rest. A residual block runs each pass (value, adjoint, tangents with
    curvature) as one loop, or one BLAS product and one loop, while its work,
    ``batch · (k + 1) · n²`` multiply-adds, is at most :data:`~hessarray.tuning.RESIDUAL_WORK`;
    beyond it BLAS products and NumPy's vectorized tanh win.

    ``None`` where the loops do not apply: switched off, the block too big, or operands that
    are not C-contiguous NumPy arrays of one float dtype.
    """
    if not (ENABLED and x.ndim == 2 and x.shape[0] * x.shape[1] ** 2 <= RESIDUAL_WORK):
        return None
    if not (_plain(x, w) if b is None else _plain(x, w, b)):
        return None
    z = numpy.empty(x.shape, x.dtype)
    _affine(x, w, b, z)
    f = numpy.tanh(z)
    df, d2f, y = numpy.empty(x.shape, x.dtype), numpy.empty(x.shape, x.dtype), numpy.empty(x.shape, x.dtype)
    _tanh_derivatives(f, df, d2f, x, x.dtype.type(h), y)
    return z, f, df, d2f, y


def residual_tanh_pull(g: Any, w: Any, df: Any, h: float) -> tuple[Any, Any, Any] | None:
    """The adjoints of a residual tanh block for ``g`` ``(B, m, n)`` at its output, in one
    pass: ``h g`` at the tanh's output, ``h g φ'`` at the dense layer's output, and the
    block's pull-back ``g + (h g φ') W``. ``None`` where the loop does not apply."""
    if not (ENABLED and g.ndim == 3 and g.shape[0] * g.shape[1] * g.shape[2] ** 2 <= RESIDUAL_WORK):
        return None
    if not _plain(g, w, df):
        return None
    hg, gd, pulled = (numpy.empty(g.shape, g.dtype) for _ in range(3))
    _residual_tanh_pull(g, w, df, g.dtype.type(h), hg, gd, pulled)
    return hg, gd, pulled


def residual_tanh_push(t: Any, w_t: Any, df: Any, d2f: Any, g: Any, h: float) -> tuple[Any, Any] | None:
    """Tangents out of a residual tanh block, ``t + h φ'·s`` ``(k, B, n)`` with ``s = W t``,
    and the curvature term of its tanh, ``Σ_r s_i[r] g[o, r] φ''[r] s_j[r]``
    ``(B, m, k, k)``, for ``g`` ``(B, m, n)`` the adjoint at the tanh's output: ``s`` by one
    BLAS product (``w_t`` is a C-contiguous ``Wᵀ``, faster than the product in the loop), the
    rest in one loop. ``None`` where the loop does not apply."""
    if not (ENABLED and t.ndim == 3 and g.ndim == 3 and t.shape[0] <= MAX_K):
        return None
    k, batch, n = t.shape
    if batch * (k + g.shape[1]) * n * n > RESIDUAL_WORK or not _plain(t, w_t, df, d2f, g):
        return None
    s = (t.reshape(k * batch, n) @ w_t).reshape(t.shape)
    t_out = numpy.empty(t.shape, t.dtype)
    term = numpy.empty((batch, g.shape[1], k, k), t.dtype)
    _push_curvature(df, d2f, g, s, t_out, term, t, t.dtype.type(h))  # tanh's push of s, plus the skip
    return t_out, term


if numba is not None:
    # Reassociation (vectorized sums) and fused multiply-adds only: NaN and inf keep their
    # IEEE behaviour, unlike numba's ``fastmath=True``.
    _jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})

    @_jit
    def _push_curvature(df, d2f, g, t, t_out, term, skip, h):  # pragma: no cover - compiled
        # t_out = φ'·t (skip None, h 1), or skip + h φ'·t for a residual block; numba compiles
        # the two apart and drops the test on None.
        k, batch, n = t.shape
        m = g.shape[1]
        u = numpy.empty(n, dtype=t.dtype)
        zero = t.dtype.type(0)
        for b in range(batch):
            for i in range(k):
                for r in range(n):
                    if skip is None:
                        t_out[i, b, r] = df[b, r] * t[i, b, r]
                    else:
                        t_out[i, b, r] = skip[i, b, r] + h * (df[b, r] * t[i, b, r])
            for o in range(m):
                for i in range(k):
                    for r in range(n):
                        u[r] = g[b, o, r] * d2f[b, r] * t[i, b, r]
                    # Σ_r u[r] t[j, b, r] for j ≥ i, four j at a time: u is read once per four.
                    j = i
                    while j + 3 < k:
                        s0 = zero
                        s1 = zero
                        s2 = zero
                        s3 = zero
                        for r in range(n):
                            ur = u[r]
                            s0 += ur * t[j, b, r]
                            s1 += ur * t[j + 1, b, r]
                            s2 += ur * t[j + 2, b, r]
                            s3 += ur * t[j + 3, b, r]
                        term[b, o, i, j] = s0
                        term[b, o, i, j + 1] = s1
                        term[b, o, i, j + 2] = s2
                        term[b, o, i, j + 3] = s3
                        j += 4
                    while j < k:
                        s0 = zero
                        for r in range(n):
                            s0 += u[r] * t[j, b, r]
                        term[b, o, i, j] = s0
                        j += 1
                    for j in range(i + 1, k):
                        term[b, o, j, i] = term[b, o, i, j]

    @_jit
    def _tanh_derivatives(f, df, d2f, skip, h, y):  # pragma: no cover - compiled
        # With skip (a residual block's input), also y = skip + h f; compiled apart for None.
        for b in range(f.shape[0]):
            for r in range(f.shape[1]):
                v = f[b, r]
                dv = 1 - v * v
                df[b, r] = dv
                d2f[b, r] = -2 * v * dv
                if skip is not None:
                    y[b, r] = skip[b, r] + h * v

    @_jit
    def _symmetrize(h):  # pragma: no cover - compiled
        half = h.dtype.type(0.5)
        for b in range(h.shape[0]):
            for i in range(h.shape[1]):
                for j in range(i + 1, h.shape[2]):
                    v = half * (h[b, i, j] + h[b, j, i])
                    h[b, i, j] = v
                    h[b, j, i] = v

    @_jit
    def _affine(x, w, bias, z):  # pragma: no cover - compiled
        batch, n = x.shape
        for b in range(batch):
            for j in range(w.shape[0]):
                s = x.dtype.type(0) if bias is None else bias[j]
                for i in range(n):
                    s += w[j, i] * x[b, i]
                z[b, j] = s

    @_jit
    def _residual_tanh_pull(g, w, df, h, hg, gd, pulled):  # pragma: no cover - compiled
        batch, m, n = g.shape
        for b in range(batch):
            for o in range(m):
                for r in range(n):
                    v = h * g[b, o, r]
                    hg[b, o, r] = v
                    gd[b, o, r] = v * df[b, r]
                for i in range(n):
                    pulled[b, o, i] = g[b, o, i]
                for r in range(n):
                    a = gd[b, o, r]
                    for i in range(n):
                        pulled[b, o, i] += a * w[r, i]
