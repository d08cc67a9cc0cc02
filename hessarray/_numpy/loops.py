"""Compiled NumPy loops (numba) for the generic passes, beside the portable array-API code.

NumPy runs one pass over memory per operation. For an elementwise layer in the forward
mode the portable code makes about eight: ``φ'·t`` for each direction, ``c = g φ''``,
``t c`` and the ``k²`` dot products of the curvature term. One loop over the samples that
keeps ``c`` and the running sums in registers reads ``φ'``, ``φ''``, ``g`` and ``t`` once and
writes ``φ'·t`` once (about half the memory traffic; ``docs/benchmarks.md``).

They run only when every operand is a C-contiguous NumPy float32/float64 array, ``numba`` is
installed and :data:`hessarray._numpy.ENABLED` is true (read at each call: tests switch it
by assignment). Everything else, and every other backend, takes the portable path, which the
tests compare them against. The loops keep IEEE semantics for NaN and infinity (only
reassociation and fused multiply-adds are allowed, so sums are vectorized): results agree
with the portable path to rounding. Reached through :mod:`hessarray._delegation`.
"""

from __future__ import annotations

from typing import Any

import numpy

from .. import _numpy as package
from ..tuning import MAX_K
from . import FLOATS, numba


def _plain(*arrays: Any) -> bool:
    """C-contiguous NumPy arrays of one float dtype (so no broadcast views either)."""
    first = arrays[0]
    if type(first) is not numpy.ndarray or first.dtype not in FLOATS:  # type first: no
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
    if not (package.ENABLED and t.ndim == 3 and t.shape[0] <= MAX_K and g.ndim == 3 and _plain(df, d2f, g, t)):
        return None
    k, batch, _ = t.shape
    t_out = numpy.empty(t.shape, t.dtype)
    term = numpy.empty((batch, g.shape[1], k, k), t.dtype)
    _push_curvature(df, d2f, g, t, t_out, term)
    return t_out, term


def symmetrize(h: Any) -> bool:
    """``h ← (h + hᵀ) / 2`` over the last two axes, in place, for a C-contiguous NumPy float
    array; ``False`` (nothing done) where the loop does not apply.

    One pass over ``h``, half of it read across columns; NumPy needs a transposed copy and
    two more passes.
    """
    if not (package.ENABLED and h.ndim >= 2 and _plain(h) and h.flags.writeable):
        return False
    n = h.shape[-1]
    _symmetrize(h.reshape(-1, n, n))
    return True


if numba is not None:
    # Reassociation (vectorized sums) and fused multiply-adds only: NaN and inf keep their
    # IEEE behaviour, unlike numba's ``fastmath=True``.
    _jit = numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})

    @_jit
    def _push_curvature(df, d2f, g, t, t_out, term):  # pragma: no cover - compiled
        k, batch, n = t.shape
        m = g.shape[1]
        u = numpy.empty(n, dtype=t.dtype)
        zero = t.dtype.type(0)
        for b in range(batch):
            for i in range(k):
                for r in range(n):
                    t_out[i, b, r] = df[b, r] * t[i, b, r]
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
    def _symmetrize(h):  # pragma: no cover - compiled
        half = h.dtype.type(0.5)
        for b in range(h.shape[0]):
            for i in range(h.shape[1]):
                for j in range(i + 1, h.shape[2]):
                    v = half * (h[b, i, j] + h[b, j, i])
                    h[b, i, j] = v
                    h[b, j, i] = v
