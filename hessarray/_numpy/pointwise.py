"""The built-in activations' ``φ, φ', φ''`` over a tile, compiled (numba): :func:`pointwise_rows`.

One tight loop per activation (the dispatch on its code comes before the loops), on
:mod:`.vmath`'s vectorizable functions, in the array's own dtype (float32 stays float32):
the same formulas as the ``derivatives`` of the classes in
:mod:`hessarray.layers.elementwise`, sharing subexpressions the same way, so the results
agree with them to rounding. Where a more accurate form costs nothing it is taken:

- sigmoid, softplus, SiLU: ``e = exp(-|v|)``, ``sp = 1/(1+e)``, ``sn = e·sp``, ``σ = sp`` for
  ``v ≥ 0`` else ``sn``; ``σ(1-σ) = sp·sn`` and ``1-2σ = ±(sn - sp)``, accurate in both tails;
- ELU: ``α·expm1(v)`` for ``v ≤ 0`` (the portable form ``α·e^v - α`` loses the digits near 0).

sin/cos: :func:`.vmath.sincos` where ``|v|`` is within its reduction's range; the others
(huge arguments, ``±inf``) are computed by the C library in a second, scalar pass that runs
only when the first found some.

Without numba the module defines :data:`CODES` only, and ``pointwise_rows`` is ``None``.
"""

from __future__ import annotations

import math

import numpy

from . import numba

#: The activations' codes for :func:`pointwise_rows`, by :class:`~hessarray.layers.lowered.Pointwise`
#: name. ReLU is ``"leaky_relu"`` with slope 0. Their parameters (``params[0]``): softplus β,
#: ELU α, leaky ReLU's slope, power's exponent p.
CODES: dict[str, int] = {
    "tanh": 0,
    "sigmoid": 1,
    "softplus": 2,
    "silu": 3,
    "elu": 4,
    "leaky_relu": 5,
    "logcosh": 6,
    "sin": 7,
    "cos": 8,
    "exp": 9,
    "square": 10,
    "power": 11,
    "identity": 12,
}

_TANH, _SIGMOID, _SOFTPLUS, _SILU, _ELU, _LEAKY_RELU, _LOGCOSH = 0, 1, 2, 3, 4, 5, 6
_SIN, _COS, _EXP, _SQUARE, _POWER, _IDENTITY = 7, 8, 9, 10, 11, 12
_LN2 = math.log(2.0)

pointwise_rows = output_rows = adjoint_rows = slope_rows = seed_rows = scale_rows = None


def from_output(name: str, params: tuple) -> bool:
    """Whether the activation's ``φ'`` and ``φ''`` are functions of its output ``y = φ(v)``
    alone, computed from it exactly as the portable class computes them (tanh: ``1 - y²``,
    ``-2y(1 - y²)``; exp: ``y``, ``y``; leaky ReLU with a slope ``≥ 0``: ``y > 0``; the
    identity): the kernel then keeps ``y`` and stores no ``φ'``, ``φ''`` rows
    (:func:`output_rows`, :func:`adjoint_rows`, :func:`scale_rows`). Not the sigmoid: ``1 - y``
    loses the digits the compiled ``σ(1-σ)`` keeps in the upper tail."""
    if name == "leaky_relu":
        return params[0] >= 0.0
    return name in ("tanh", "exp", "identity")


if numba is not None:
    from . import vmath

    # Reassociation never: the functions' formulas are those of the portable classes.
    _jit = numba.njit(cache=True, **vmath.JIT_OPTIONS)

    # Each loop: v = z + bias; z ← φ(v), d1 ← φ'(v), and d2 ← φ''(v) where ``curved`` (a
    # loop-invariant test LLVM takes out of the loop). Constants typed with the dtype: numba
    # would widen float32 with a float64 (or int) literal.

    @_jit
    def _sigmoid_rows(z, bias, d1, d2, curved):  # pragma: no cover - compiled
        zero = z.dtype.type(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                _, sp, sn = vmath.logistic(v)
                pos = v >= zero
                ds = sp * sn
                z[b, r] = sp if pos else sn
                d1[b, r] = ds
                if curved:
                    d2[b, r] = ds * (sn - sp if pos else sp - sn)

    @_jit
    def _softplus_rows(z, bias, d1, d2, curved, beta):  # pragma: no cover - compiled
        zero = z.dtype.type(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                bz = beta * (z[b, r] + bias[r])
                e, sp, sn = vmath.logistic(bz)
                z[b, r] = ((bz if bz > zero else zero) + vmath.log1p(e)) / beta
                d1[b, r] = sp if bz >= zero else sn
                if curved:
                    d2[b, r] = beta * sp * sn

    @_jit
    def _silu_rows(z, bias, d1, d2, curved):  # pragma: no cover - compiled
        two = z.dtype.type(2.0)
        zero = z.dtype.type(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                _, sp, sn = vmath.logistic(v)
                pos = v >= zero
                s = sp if pos else sn
                ds = sp * sn
                z[b, r] = v * s
                d1[b, r] = s + v * ds
                if curved:
                    d2[b, r] = ds * (two + v * (sn - sp if pos else sp - sn))

    @_jit
    def _elu_rows(z, bias, d1, d2, curved, alpha):  # pragma: no cover - compiled
        one = z.dtype.type(1.0)
        zero = z.dtype.type(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                pos = v > zero
                vn = zero if pos else v  # exp of the negative part only (NaN stays)
                e = alpha * vmath.exp(vn)
                z[b, r] = v if pos else alpha * vmath.expm1(vn)
                d1[b, r] = one if pos else e
                if curved:
                    d2[b, r] = zero if pos else e

    @_jit
    def _leaky_relu_rows(z, bias, d1, d2, curved, slope):  # pragma: no cover - compiled
        one = z.dtype.type(1.0)
        zero = z.dtype.type(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                d = one if v > zero else slope
                z[b, r] = v * d
                d1[b, r] = d
                if curved:
                    d2[b, r] = zero

    @_jit
    def _logcosh_rows(z, bias, d1, d2, curved):  # pragma: no cover - compiled
        one = z.dtype.type(1.0)
        m2 = z.dtype.type(-2.0)
        ln2 = z.dtype.type(_LN2)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                a = abs(v)
                t = vmath.tanh(v)
                z[b, r] = a + vmath.log1p(vmath.exp(m2 * a)) - ln2
                d1[b, r] = t
                if curved:
                    d2[b, r] = one - t * t

    @_jit
    def _sincos_rows(z, bias, d1, d2, curved, cosine):  # pragma: no cover - compiled
        # sin: (sin, cos, -sin); cos: (cos, -sin, -cos). Out of sincos's range z keeps v (then
        # |z| > the range's limit ≥ 1 > |sin|, which marks it for the second pass).
        big = False
        if cosine:
            for b in range(z.shape[0]):
                for r in range(z.shape[1]):
                    v = z[b, r] + bias[r]
                    s, c = vmath.sincos(v)
                    out = vmath.sincos_out_of_range(v)
                    big |= out
                    z[b, r] = v if out else c
                    d1[b, r] = -s
                    if curved:
                        d2[b, r] = -c
        else:
            for b in range(z.shape[0]):
                for r in range(z.shape[1]):
                    v = z[b, r] + bias[r]
                    s, c = vmath.sincos(v)
                    out = vmath.sincos_out_of_range(v)
                    big |= out
                    z[b, r] = v if out else s
                    d1[b, r] = c
                    if curved:
                        d2[b, r] = -s
        if not big:
            return
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r]
                if vmath.sincos_out_of_range(v):
                    s = math.sin(v)
                    c = math.cos(v)
                    z[b, r] = c if cosine else s
                    d1[b, r] = -s if cosine else c
                    if curved:
                        d2[b, r] = -c if cosine else -s

    @_jit
    def _square_rows(z, bias, d1, d2, curved):  # pragma: no cover - compiled
        two = z.dtype.type(2.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                z[b, r] = v * v
                d1[b, r] = two * v
                if curved:
                    d2[b, r] = two

    @_jit
    def _power_kind(coef, e):  # pragma: no cover - compiled
        if coef == 0.0:
            return 0
        if e == 0.0:
            return 1
        if e == 1.0:
            return 2
        if e == 2.0:
            return 3
        if e == 0.5:
            return 5
        return 4

    @_jit
    def _power_term(v, kind, coef, e, zero):  # pragma: no cover - compiled
        if kind == 0:
            return zero
        if kind == 1:
            return coef
        if kind == 2:
            return coef * v
        if kind == 3:
            return coef * (v * v)
        if kind == 5:
            return coef * numpy.sqrt(v)
        return coef * v**e

    @_jit
    def _power_rows(z, bias, d1, d2, curved, p):  # pragma: no cover - compiled
        dt = z.dtype.type
        c1 = p
        c2 = p * (p - 1.0)
        k0 = _power_kind(1.0, p)
        k1 = _power_kind(c1, p - 1.0)
        k2 = _power_kind(c2, p - 2.0)
        f0, f1, f2 = dt(1.0), dt(c1), dt(c2)
        e0, e1, e2 = dt(p), dt(p - 1.0), dt(p - 2.0)
        zero = dt(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                v = z[b, r] + bias[r]
                z[b, r] = _power_term(v, k0, f0, e0, zero)
                d1[b, r] = _power_term(v, k1, f1, e1, zero)
                if curved:
                    d2[b, r] = _power_term(v, k2, f2, e2, zero)

    @_jit
    def pointwise_rows(code, param, z, bias, d1, d2, curved):  # pragma: no cover - compiled
        """``z ← φ(z + bias)``, ``d1 ← φ'``, and ``d2 ← φ''`` where ``curved`` (else ``d2`` is
        not touched), for the activation ``code`` (:data:`CODES`) with ``param`` (float64:
        softplus β, ELU α, leaky ReLU's slope, power's p); ``z``, ``d1``, ``d2``
        ``(rows, n)`` C-contiguous, ``bias`` ``(n,)``, all float32 or all float64."""
        dt = z.dtype.type
        if code == _TANH or code == _EXP or code == _IDENTITY:
            _output_derived_rows(code, z, bias, d1, d2, curved)
        elif code == _SIGMOID:
            _sigmoid_rows(z, bias, d1, d2, curved)
        elif code == _SOFTPLUS:
            _softplus_rows(z, bias, d1, d2, curved, dt(param))
        elif code == _SILU:
            _silu_rows(z, bias, d1, d2, curved)
        elif code == _ELU:
            _elu_rows(z, bias, d1, d2, curved, dt(param))
        elif code == _LEAKY_RELU:
            _leaky_relu_rows(z, bias, d1, d2, curved, dt(param))
        elif code == _LOGCOSH:
            _logcosh_rows(z, bias, d1, d2, curved)
        elif code == _SIN:
            _sincos_rows(z, bias, d1, d2, curved, False)
        elif code == _COS:
            _sincos_rows(z, bias, d1, d2, curved, True)
        elif code == _SQUARE:
            _square_rows(z, bias, d1, d2, curved)
        else:
            _power_rows(z, bias, d1, d2, curved, param)

    # The activations whose derivatives come from their output (:func:`from_output`): ``φ`` of
    # ``v``, and ``(φ', φ'')`` of ``y``, as scalar functions inlined into the loops below, where
    # the test of ``code`` is loop-invariant (LLVM takes it out of the loop). ``one``, ``p``:
    # constants of y's dtype.
    _inline = numba.njit(cache=True, inline="always", **vmath.JIT_OPTIONS)

    @_inline
    def _value(code, v, one, p):  # pragma: no cover - compiled
        if code == _TANH:
            return vmath.tanh(v)
        if code == _EXP:
            return vmath.exp(v)
        if code == _LEAKY_RELU:  # as _leaky_relu_rows: v·1 or v·slope (inf·0 is NaN there too)
            return v * (one if v > one - one else p)
        return v

    @_inline
    def _slopes(code, y, one, p):  # pragma: no cover - compiled
        zero = one - one
        if code == _TANH:
            d = one - y * y
            yd = y * d
            return d, -(yd + yd)
        if code == _EXP:
            return y, y
        if code == _LEAKY_RELU:
            return (one if y > zero else p), zero
        return one, zero

    @_jit
    def _output_derived_rows(code, z, bias, d1, d2, curved):  # pragma: no cover - compiled
        """:func:`pointwise_rows` for tanh, exp and the identity: their ``φ'``, ``φ''`` from
        ``φ``, by the formulas of the kept-output path (:func:`_slopes`)."""
        one = z.dtype.type(1.0)
        p = z.dtype.type(0.0)
        for b in range(z.shape[0]):
            for r in range(z.shape[1]):
                y = _value(code, z[b, r] + bias[r], one, p)
                s1, s2 = _slopes(code, y, one, p)
                z[b, r] = y
                d1[b, r] = s1
                if curved:
                    d2[b, r] = s2

    @_jit
    def output_rows(code, param, v, bias, y):  # pragma: no cover - compiled
        """``y ← φ(v + bias)`` for an activation whose derivatives come from its output
        (:func:`from_output`); ``v``, ``y`` ``(rows, n)``, ``bias`` ``(n,)``."""
        one = v.dtype.type(1.0)
        p = v.dtype.type(param)
        for b in range(v.shape[0]):
            for r in range(v.shape[1]):
                y[b, r] = _value(code, v[b, r] + bias[r], one, p)

    @_jit
    def adjoint_rows(code, param, y, g, c, curved, g0, fresh):  # pragma: no cover - compiled
        """``c ← g φ''`` (where ``curved``) and ``g ← g φ'``, ``φ'`` and ``φ''`` from the output
        ``y`` ``(rows, n)``; ``g``, ``c`` ``(rows, m, n)``. ``fresh``: the adjoint coming in is
        ``g0[o]`` ``(m, n)`` for every row (the output's own gradient), and ``g`` is only
        written."""
        one = y.dtype.type(1.0)
        p = y.dtype.type(param)
        nt, m, n = g.shape
        # Three loops: one reading g0 or g itself (read while written) stays scalar behind LLVM's
        # alias check, and per-row loops are slower than a flat one (docs/benchmarks.md).
        if fresh:
            for o in range(m):
                go = g0[o]
                for b in range(nt):
                    yb = y[b]
                    gb = g[b, o]
                    cb = c[b, o]
                    for r in range(n):
                        d1, d2 = _slopes(code, yb[r], one, p)
                        gq = go[r]
                        if curved:
                            cb[r] = gq * d2
                        gb[r] = gq * d1
            return
        if m == 1:  # one flat pass
            yf = y.reshape(nt * n)
            gf = g.reshape(nt * n)
            cf = c.reshape(nt * n)
            for q in range(nt * n):
                d1, d2 = _slopes(code, yf[q], one, p)
                gq = gf[q]
                if curved:
                    cf[q] = gq * d2
                gf[q] = gq * d1
            return
        for b in range(nt):
            for o in range(m):
                for r in range(n):
                    d1, d2 = _slopes(code, y[b, r], one, p)
                    gq = g[b, o, r]
                    if curved:
                        c[b, o, r] = gq * d2
                    g[b, o, r] = gq * d1

    @_jit
    def slope_rows(code, param, y, d1):  # pragma: no cover - compiled
        """``d1 ← φ'`` from the output ``y``; both flat."""
        one = y.dtype.type(1.0)
        p = y.dtype.type(param)
        for q in range(y.shape[0]):
            d1[q] = _slopes(code, y[q], one, p)[0]

    @_jit
    def seed_rows(code, param, y, s, t0, t1):  # pragma: no cover - compiled
        """``t0 ← φ' s[0]``, ``t1 ← φ' s[1]`` row by row, ``φ'`` from the output ``y``
        ``(rows, n)``: the tangents of two seeds ``s`` ``(2, n)`` shared by all samples."""
        one = y.dtype.type(1.0)
        p = y.dtype.type(param)
        s0 = s[0]
        s1 = s[1]
        for b in range(y.shape[0]):
            for r in range(y.shape[1]):
                d = _slopes(code, y[b, r], one, p)[0]
                t0[b, r] = d * s0[r]
                t1[b, r] = d * s1[r]

    @_jit
    def scale_rows(code, param, y, t):  # pragma: no cover - compiled
        """``t[i] ← φ' t[i]`` for each direction ``i``, ``φ'`` from the output ``y`` (flat);
        ``t`` ``(k, len(y))``."""
        one = y.dtype.type(1.0)
        p = y.dtype.type(param)
        k = t.shape[0]
        if k == 2:  # both directions in one pass
            t0 = t[0]
            t1 = t[1]
            for q in range(y.shape[0]):
                d = _slopes(code, y[q], one, p)[0]
                t0[q] *= d
                t1[q] *= d
            return
        for i in range(k):
            ti = t[i]
            for q in range(y.shape[0]):
                ti[q] *= _slopes(code, y[q], one, p)[0]
