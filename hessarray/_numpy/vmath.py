"""Branch-free scalar functions for numba loops that vectorize: ``tanh``, ``exp``, ``expm1``,
``log1p`` (on [0, 1]) and ``sincos``, in float64 and float32.

numba's ``math.exp``, ``math.tanh``, ``numpy.sin`` … call the scalar C library, which LLVM
cannot vectorize: a loop over them runs one element at a time. These are written with
arithmetic, ``floor``, ``min``/``max``, ``copysign``, bit casts and selects (``a if c else b``
on values) only, so that a loop calling them (LLVM inlines them) runs on SIMD registers. Each
is an overload dispatched on the argument's type (float64 or float32, the float32 one all in
float32), compiled with ``fastmath={"contract"}`` alone: reassociation could undo the
two-part constants of the argument reductions or cancel the digits of ``s·p + (s - 1)``;
contraction into FMAs only removes roundings. Called from Python they raise.

Accuracy: polynomials by Taylor series (``exp``, ``expm1``, ``log1p``) or minimax (fdlibm's
for float64 ``sincos``, Cephes' for float32) whose truncation is below half an ulp on the
reduced interval; within 2 ulp of the exact value (2.5 for float32 ``tanh``; the tests check
against mpmath).
IEEE behaviour as NumPy's: NaN propagates, ``±inf`` and ``±0`` give NumPy's results, ``exp``
overflows to ``inf`` and underflows to ``0`` (its subnormal results may be an ulp of the
subnormal spacing off, not correctly rounded); ``tanh`` keeps subnormal arguments.
:func:`sincos` is accurate only for ``|x| ≤`` :data:`SINCOS_LIMIT64`/:data:`SINCOS_LIMIT32`
(:func:`sincos_out_of_range`); a caller computes the others (and ``±inf``) with ``math.sin``/
``math.cos``. :func:`log1p` covers ``[0, 1]``, what softplus and log-cosh need
(``log1p(exp(-|z|))``).

Everything is defined only where numba is installed.
"""

from __future__ import annotations

import math

import numpy

from . import numba

#: ``|x|`` up to which :func:`sincos`'s reduction by π/2 is accurate (float64 / float32):
#: ``n·P1`` … exact for the quadrant ``n < 2¹⁹`` (``2¹²`` in float32).
SINCOS_LIMIT64 = 2.0**19
SINCOS_LIMIT32 = 4096.0

if numba is not None:
    from llvmlite import ir as llvm_ir
    from numba.core import types as nbtypes
    from numba.extending import intrinsic, overload

    #: The options every function here is compiled with (see the module's docstring).
    JIT_OPTIONS = {"nogil": True, "fastmath": {"contract"}, "error_model": "numpy"}

    @intrinsic
    def float_from_bits(typingctx, bits):  # pragma: no cover - compiled
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

    # The helpers below, called by the overloads' implementations (LLVM inlines them).
    _helper = numba.njit(cache=True, **JIT_OPTIONS)

    f32 = numpy.float32

    # Taylor coefficients 1/k! of expm1(r) = r + r²(1/2 + r/6 + …), highest first: on
    # |r| ≤ ln2/2 the first term left out is below half an ulp (degree 13 / 7).
    _E64 = tuple(1.0 / math.factorial(i) for i in range(13, 1, -1))
    _E32 = tuple(f32(1.0 / math.factorial(i)) for i in range(7, 1, -1))
    # ln 2 in two parts, the first with trailing zeros so that n·LN2_HI is exact.
    _LN2_HI64, _LN2_LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
    _LN2_HI32, _LN2_LO32 = f32(0.693359375), f32(-2.12194440e-4)
    _INV_LN2 = 1.4426950408889634

    # 2ⁿ for an integral float n whose 2ⁿ is normal: the float whose bits are (n + bias)·2^m,
    # that integer formed in floating point, where it is exact.
    @_helper
    def _pow2_64(n):  # pragma: no cover - compiled
        return float_from_bits(numpy.int64(n * 4503599627370496.0 + 4607182418800017408.0))  # (n+1023)·2⁵²

    @_helper
    def _pow2_32(n):  # pragma: no cover - compiled
        return float_from_bits(numpy.int32(n * f32(8388608.0) + f32(1065353216.0)))  # (n+127)·2²³

    # expm1 of the reduced argument r, |r| ≤ ln2/2 (r + r²·q, the leading term exact).
    @_helper
    def _expm1_poly64(r):  # pragma: no cover - compiled
        q = _E64[0]
        for c in _E64[1:]:
            q = q * r + c
        return r + r * r * q

    @_helper
    def _expm1_poly32(r):  # pragma: no cover - compiled
        q = _E32[0]
        for c in _E32[1:]:
            q = q * r + c
        return r + r * r * q

    # x = n ln2 + r, with x first clamped to [lo, hi] (NaN stays NaN).
    @_helper
    def _reduce64(x, lo, hi):  # pragma: no cover - compiled
        xc = min(max(x, lo), hi)
        n = numpy.floor(xc * _INV_LN2 + 0.5)
        return n, (xc - n * _LN2_HI64) - n * _LN2_LO64

    @_helper
    def _reduce32(x, lo, hi):  # pragma: no cover - compiled
        xc = min(max(x, lo), hi)
        n = numpy.floor(xc * f32(_INV_LN2) + f32(0.5))
        return n, (xc - n * _LN2_HI32) - n * _LN2_LO32

    # exp(x) = 2ⁿ¹·(2ⁿ²·e^r): 2ⁿ split in two normal factors, so that the product overflows
    # to inf above the largest float and underflows gradually to 0 (one rounding more in
    # the subnormal range). The clamp keeps n within twice the exponent range.
    def _exp64(x):  # pragma: no cover - compiled
        n, r = _reduce64(x, -746.0, 710.0)
        p = _expm1_poly64(r)
        n2 = numpy.floor(n * 0.5)
        s2 = _pow2_64(n2)
        e = (s2 * p + s2) * _pow2_64(n - n2)
        return e if x == x else x

    def _exp32(x):  # pragma: no cover - compiled
        n, r = _reduce32(x, f32(-104.0), f32(89.0))
        p = _expm1_poly32(r)
        n2 = numpy.floor(n * f32(0.5))
        s2 = _pow2_32(n2)
        e = (s2 * p + s2) * _pow2_32(n - n2)
        return e if x == x else x

    # expm1(x) = 2ⁿ expm1(r) + (2ⁿ - 1), x clamped below where it rounds to -1 and above
    # where it overflows. At the top exponent (n = 1024, 128) 2ⁿ = 2·2ⁿ⁻¹: there
    # s1·(s2·p + (s2 - 1/s1)) with s1 = 2 (else s1 = 1: the formula as it stands).
    def _expm1_64(x):  # pragma: no cover - compiled
        n, r = _reduce64(x, -40.0, 710.0)
        p = _expm1_poly64(r)
        n1 = max(n - 1023.0, 0.0)
        s2 = _pow2_64(n - n1)
        em = (1.0 + n1) * (s2 * p + (s2 - (1.0 - 0.5 * n1)))
        em = x if x == 0.0 else em  # -0 stays -0
        return em if x == x else x

    def _expm1_32(x):  # pragma: no cover - compiled
        n, r = _reduce32(x, f32(-20.0), f32(89.0))
        p = _expm1_poly32(r)
        n1 = max(n - f32(127.0), f32(0.0))
        s2 = _pow2_32(n - n1)
        em = (f32(1.0) + n1) * (s2 * p + (s2 - (f32(1.0) - f32(0.5) * n1)))
        em = x if x == f32(0.0) else em
        return em if x == x else x

    # tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) with the sign of x; |x| clamped where tanh
    # rounds to ±1, which keeps 2ⁿ normal. Subnormal x: n = 0, expm1 = -2|x| exactly.
    def _tanh64(x):  # pragma: no cover - compiled
        a = min(abs(x), 20.0)
        n = numpy.floor(-2.8853900817779268 * a + 0.5)  # -2|x| / ln2, rounded: -58…0
        s = _pow2_64(n)
        y = (-2.0 * a - n * _LN2_HI64) - n * _LN2_LO64
        em = s * _expm1_poly64(y) + (s - 1.0)
        t = numpy.copysign(em / (-2.0 - em), x)
        return t if x == x else x

    def _tanh32(x):  # pragma: no cover - compiled
        a = min(abs(x), f32(10.0))
        n = numpy.floor(f32(-2.8853900817779268) * a + f32(0.5))  # -29…0
        s = _pow2_32(n)
        y = (f32(-2.0) * a - n * _LN2_HI32) - n * _LN2_LO32
        em = s * _expm1_poly32(y) + (s - f32(1.0))
        t = numpy.copysign(em / (f32(-2.0) - em), x)
        return t if x == x else x

    # log1p(x), 0 ≤ x ≤ 1: 1 + x = 2ᵏ(1 + f) with k = 0, f = x (x < 1/2) or k = 1,
    # f = (x - 1)/2 (exact: Sterbenz), -1/4 ≤ f < 1/2. log(1 + f) = 2 atanh(s), s = f/(2 + f),
    # written as f - (f²/2 - s(f²/2 + R)), R = Σ 2s²ʲ/(2j+1) (fdlibm's form: f exact, the
    # rest a correction); |s| ≤ 1/5, R to s²² (s¹⁰ in float32): truncation below half an ulp.
    _L64 = tuple(2.0 / (2 * j + 1) for j in range(11, 0, -1))
    _L32 = tuple(f32(2.0 / (2 * j + 1)) for j in range(5, 0, -1))

    def _log1p64(x):  # pragma: no cover - compiled
        k = 1.0 if x >= 0.5 else 0.0
        f = (x - 1.0) * 0.5 if x >= 0.5 else x
        s = f / (2.0 + f)
        z = s * s
        q = _L64[0]
        for c in _L64[1:]:
            q = q * z + c
        hfsq = 0.5 * f * f
        lg = f - (hfsq - s * (hfsq + z * q))
        return k * _LN2_HI64 + (lg + k * _LN2_LO64)

    def _log1p32(x):  # pragma: no cover - compiled
        k = f32(1.0) if x >= f32(0.5) else f32(0.0)
        f = (x - f32(1.0)) * f32(0.5) if x >= f32(0.5) else x
        s = f / (f32(2.0) + f)
        z = s * s
        q = _L32[0]
        for c in _L32[1:]:
            q = q * z + c
        hfsq = f32(0.5) * f * f
        lg = f - (hfsq - s * (hfsq + z * q))
        return k * _LN2_HI32 + (lg + k * _LN2_LO32)

    # sincos: x = n π/2 + r, |r| ≤ π/4, by Cody–Waite with π/2 in four parts, the first three
    # short enough that n·P_i is exact (and x - n·P1 exact by Sterbenz). Then fdlibm's
    # kernels (float64; minimax, error below 2⁻⁵⁸) or Cephes' (float32), and the quadrant.
    _P64 = (
        1.57079632673412561417e00,  # 33 bits
        6.07710050630396597660e-11,  # 33 bits
        2.02226624871116645580e-21,  # 33 bits
        8.47842766036889956997e-32,
    )
    _P32 = (f32(1.5703125), f32(4.837512969970703125e-4), f32(7.549533620476723e-08), f32(2.5633440682570896e-12))
    _S64 = (
        1.58969099521155010221e-10,
        -2.50507602534068634195e-08,
        2.75573137070700676789e-06,
        -1.98412698298579493134e-04,
        8.33333333332248946124e-03,
        -1.66666666666666324348e-01,
    )
    _C64 = (
        -1.13596475577881948265e-11,
        2.08757232129817482790e-09,
        -2.75573143513906633035e-07,
        2.48015872894767294178e-05,
        -1.38888888888741095749e-03,
        4.16666666666666019037e-02,
    )
    _S32 = (f32(-1.9515295891e-4), f32(8.3321608736e-3), f32(-1.6666654611e-1))
    _C32 = (f32(2.443315711809948e-5), f32(-1.388731625493765e-3), f32(4.166664568298827e-2))
    _TWO_OVER_PI = 0.63661977236758134308

    @_helper
    def _quadrant(q, r, sr, cr):  # pragma: no cover - compiled
        # sin x = sin r, cos r, -sin r, -cos r in quadrants q = n mod 4 = 0…3; cos x one on.
        odd = q == 1 or q == 3
        sr = r if r == 0 else sr  # ±0 keeps its sign
        s = cr if odd else sr
        c = sr if odd else cr
        s = -s if q >= 2 else s
        c = -c if q == 1 or q == 2 else c
        return s, c

    def _sincos64(x):  # pragma: no cover - compiled
        n = numpy.floor(x * _TWO_OVER_PI + 0.5)
        r = ((x - n * _P64[0]) - n * _P64[1]) - n * _P64[2]
        r = r - n * _P64[3]
        z = r * r
        ps = _S64[0]
        for c in _S64[1:]:
            ps = ps * z + c
        sr = r + r * z * ps
        pc = _C64[0]
        for c in _C64[1:]:
            pc = pc * z + c
        hz = 0.5 * z
        w = 1.0 - hz
        cr = w + (((1.0 - w) - hz) + z * z * pc)  # 1 - z/2 + z²·pc, the first sum's error kept
        return _quadrant(n - 4.0 * numpy.floor(n * 0.25), r, sr, cr)

    def _sincos32(x):  # pragma: no cover - compiled
        n = numpy.floor(x * f32(_TWO_OVER_PI) + f32(0.5))
        r = ((x - n * _P32[0]) - n * _P32[1]) - n * _P32[2]
        r = r - n * _P32[3]
        z = r * r
        ps = _S32[0]
        for c in _S32[1:]:
            ps = ps * z + c
        sr = r + r * z * ps
        pc = _C32[0]
        for c in _C32[1:]:
            pc = pc * z + c
        hz = f32(0.5) * z
        w = f32(1.0) - hz
        cr = w + (((f32(1.0) - w) - hz) + z * z * pc)
        return _quadrant(n - f32(4.0) * numpy.floor(n * f32(0.25)), r, sr, cr)

    def _out_of_range64(x):  # pragma: no cover - compiled
        return abs(x) > SINCOS_LIMIT64

    def _out_of_range32(x):  # pragma: no cover - compiled
        return abs(x) > f32(SINCOS_LIMIT32)

    def _logistic64(x):  # pragma: no cover - compiled
        e = exp(-abs(x))  # (the overload below, resolved when this compiles)
        sp = 1.0 / (1.0 + e)
        return e, sp, e * sp

    def _logistic32(x):  # pragma: no cover - compiled
        e = exp(-abs(x))
        sp = f32(1.0) / (f32(1.0) + e)
        return e, sp, e * sp

    def _by_dtype(impl64, impl32, name: str, doc: str):
        """A function for compiled code that runs ``impl64`` on float64, ``impl32`` on float32."""

        def stub(x):  # pragma: no cover - replaced in compiled code
            raise NotImplementedError(f"vmath.{name} runs only inside numba-compiled code")

        stub.__name__ = stub.__qualname__ = name
        stub.__doc__ = doc

        @overload(stub, jit_options=JIT_OPTIONS)
        def _impl(x):  # pragma: no cover - compiled
            if x == nbtypes.float64:
                return impl64
            if x == nbtypes.float32:
                return impl32
            return None

        return stub

    tanh = _by_dtype(_tanh64, _tanh32, "tanh", "``tanh(x)``, within 2 ulp (2.5 in float32).")
    exp = _by_dtype(_exp64, _exp32, "exp", "``e^x``: inf above the largest float, 0 below the smallest.")
    expm1 = _by_dtype(_expm1_64, _expm1_32, "expm1", "``e^x - 1``, accurate near 0.")
    log1p = _by_dtype(_log1p64, _log1p32, "log1p", "``log(1 + u)`` for ``0 ≤ u ≤ 1`` (only).")
    logistic = _by_dtype(
        _logistic64,
        _logistic32,
        "logistic",
        "``(e, σ(|x|), σ(-|x|))`` with ``e = exp(-|x|)``: the logistic function in both tails, accurate in each.",
    )
    sincos = _by_dtype(
        _sincos64,
        _sincos32,
        "sincos",
        "``(sin x, cos x)``; NaN gives NaNs, and ``x`` where :func:`sincos_out_of_range` meaningless values.",
    )
    sincos_out_of_range = _by_dtype(
        _out_of_range64,
        _out_of_range32,
        "sincos_out_of_range",
        "Whether ``|x|`` exceeds the range where :func:`sincos` is accurate (``±inf``: True, NaN: False).",
    )
