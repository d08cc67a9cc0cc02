"""The compiled activations (:mod:`hessarray._numpy.pointwise`, :mod:`hessarray._numpy.vmath`)
against the portable ``Activation.derivatives`` on NumPy, and vmath's functions against mpmath."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from hessarray._numpy import pointwise, vmath  # noqa: E402
from hessarray.layers import elementwise as el  # noqa: E402

DTYPES = [np.float64, np.float32]
IDS = ["float64", "float32"]

# (code name, layer, params[0], absolute-error scale: "one" for bounded values, "v" for values
# that grow like |v|; the portable forms lose digits near φ's zeros, e.g. σ(-50) = 0 by tanh).
CASES = [
    ("tanh", el.Tanh(), 0.0),
    ("sigmoid", el.Sigmoid(), 0.0),
    ("softplus", el.Softplus(), 1.0),
    ("softplus", el.Softplus(beta=2.5), 2.5),
    ("silu", el.SiLU(), 0.0),
    ("elu", el.ELU(), 1.0),
    ("elu", el.ELU(alpha=0.5), 0.5),
    ("leaky_relu", el.LeakyReLU(), 0.01),
    ("leaky_relu", el.ReLU(), 0.0),
    ("logcosh", el.LogCosh(), 0.0),
    ("sin", el.Sin(), 0.0),
    ("cos", el.Cos(), 0.0),
    ("exp", el.Exp(), 0.0),
    ("square", el.Square(), 0.0),
    ("power", el.Power(3.0), 3.0),
    ("power", el.Power(2.5), 2.5),
    ("power", el.Power(2.0), 2.0),
    ("power", el.Power(1.0), 1.0),
    ("power", el.Power(0.0), 0.0),
    ("power", el.Power(-1.5), -1.5),
    ("identity", el.Identity(), 0.0),
]
CASE_IDS = [f"{name}-{p}" for name, _, p in CASES]
GROWING = {"silu", "logcosh", "softplus", "elu", "leaky_relu"}  # values and errors scale with |v|


def _values(dtype) -> np.ndarray:
    """[-50, 50] and its small values, the specials, exp's and sincos's range edges, huge arguments."""
    fi = np.finfo(dtype)
    grid = np.linspace(-50, 50, 2001)
    small = np.geomspace(1e-30, 1.0, 60)
    edges = [709.7, 709.8, 710.0, -708.3, -708.5, -745.0, -746.0, 88.7, 88.8, 89.0, -87.3, -87.4, -103.5, -104.5]
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, fi.tiny, -fi.tiny, fi.smallest_subnormal, 20.0, 10.0, 0.5, 0.49]
    trig = [4096.0, 4097.0, 1e5, 5.2e5, 1e6, 1e20, -1e20, 3e38, np.pi / 2, np.pi, 100 * np.pi]
    with np.errstate(over="ignore"):
        v = np.concatenate([grid, small, -small, edges, special, trig, -np.array(trig)]).astype(dtype)
    return np.concatenate([v, np.zeros(-v.size % 16, dtype)])


def _run(name, p, z, bias, curved=True, d2_fill=0.0):
    z = z.copy()
    d1 = np.full_like(z, np.nan)
    d2 = np.full_like(z, d2_fill)
    pointwise.pointwise_rows(pointwise.CODES[name], p, z, bias, d1, d2, curved)
    return z, d1, d2


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize(("name", "layer", "p"), CASES, ids=CASE_IDS)
def test_matches_portable_derivatives(name, layer, p, dtype):
    v = _values(dtype)
    z = v.reshape(-1, 16)
    bias = np.full(16, -0.0, dtype)  # x + (-0) = x, also for x = -0
    got = _run(name, p, z, bias)
    with np.errstate(all="ignore"):
        want = layer.derivatives(np, v)
    eps = np.finfo(dtype).eps
    scale = np.where(np.isfinite(v), 1.0 + np.abs(v.astype(np.float64)), 1.0) if name in GROWING else 1.0
    if name in ("elu", "softplus"):
        scale = scale * max(p, 1.0)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == dtype
        g = g.reshape(-1)
        same_special = (np.isnan(g) & np.isnan(w)) | (g == w)
        assert np.array_equal(np.isnan(g), np.isnan(w)), (name, k, v[np.isnan(g) != np.isnan(w)])
        with np.errstate(invalid="ignore"):  # inf - inf: the specials are compared above
            close = np.abs(g.astype(np.float64) - w) <= 6 * eps * np.abs(w) + 8 * eps * scale
        ok = same_special | close
        assert ok.all(), (name, k, v[~ok][:6], g[~ok][:6], w[~ok][:6])
        if name in ("tanh", "sin", "elu", "silu", "identity", "square", "leaky_relu") and k == 0:
            assert np.array_equal(np.signbit(g[v == 0]), np.signbit(v[v == 0])) or name == "square"


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize(("name", "layer", "p"), CASES, ids=CASE_IDS)
def test_bias_and_flat_curvature(name, layer, p, dtype):
    """``v = z + bias`` as NumPy adds it; ``curved=False`` writes no ``d2``."""
    rng = np.random.default_rng(3)
    z = rng.uniform(-6, 6, (5, 16)).astype(dtype)
    bias = rng.uniform(-3, 3, 16).astype(dtype)
    biased = _run(name, p, z, bias)
    summed = _run(name, p, z + bias, np.zeros(16, dtype))
    for a, b in zip(biased, summed):
        np.testing.assert_array_equal(a, b)
    flat = _run(name, p, z, bias, curved=False, d2_fill=7.0)
    np.testing.assert_array_equal(flat[0], biased[0])
    np.testing.assert_array_equal(flat[1], biased[1])
    assert (flat[2] == 7.0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_sin_cos_out_of_range_in_the_second_pass(dtype):
    """Arguments beyond the vector reduction's range, inf among them, by the C library."""
    v = np.array([[1e6, -3e7, 1e20, 1.5, np.inf, -np.inf, np.nan, 2.0**22]], dtype)
    for name, f, df in (("sin", np.sin, np.cos), ("cos", np.cos, lambda x: -np.sin(x))):
        with np.errstate(invalid="ignore"):
            want = f(v.astype(np.float64)), df(v.astype(np.float64))
        got = _run(name, 0.0, v, np.zeros(v.shape[1], dtype))
        np.testing.assert_allclose(got[0], want[0].astype(dtype), rtol=4 * np.finfo(dtype).eps, atol=1e-30)
        np.testing.assert_allclose(got[1], want[1].astype(dtype), rtol=4 * np.finfo(dtype).eps, atol=1e-30)
        np.testing.assert_array_equal(got[2], -got[0])


if pointwise.pointwise_rows is not None:
    import numba

    @numba.njit(cache=True, **vmath.JIT_OPTIONS)
    def _vmath(code, x, out, out2):  # pragma: no cover - compiled
        for i in range(x.shape[0]):
            v = x[i]
            if code == 0:
                out[i] = vmath.tanh(v)
            elif code == 1:
                out[i] = vmath.exp(v)
            elif code == 2:
                out[i] = vmath.expm1(v)
            elif code == 3:
                out[i] = vmath.log1p(v)
            else:
                out[i], out2[i] = vmath.sincos(v)


def _ulps(got, exact, dtype):
    """``|got - exact|`` in ulps of the exact value rounded to ``dtype`` (normal results only)."""
    with np.errstate(over="ignore"):
        rounded = exact.astype(dtype)
    normal = np.isfinite(rounded) & (np.abs(rounded) >= np.finfo(dtype).tiny)
    ulps = np.abs(got[normal].astype(np.float64) - exact[normal]) / np.spacing(np.abs(rounded[normal])).astype(float)
    return ulps, normal


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_vmath_within_a_few_ulp_of_exact(dtype):
    """tanh, exp, expm1, log1p on [0, 1], sin and cos against mpmath; specials as NumPy's."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.prec = 120
    rng = np.random.default_rng(7)
    f64 = dtype == np.float64
    top, tiny = (709.0, -300) if f64 else (88.0, -44)
    sign = np.sign(rng.standard_normal(400))
    lim = vmath.SINCOS_LIMIT64 if f64 else vmath.SINCOS_LIMIT32
    grids = {
        0: np.concatenate(
            [rng.uniform(-25, 25, 400), sign * 10.0 ** rng.uniform(tiny, 1.5, 400), [0.17, 0.35, 10, 20]]
        ),
        1: np.concatenate([rng.uniform(-top - 40, top + 1, 400), rng.uniform(-2, 2, 300), [top + 0.7, -top + 0.4]]),
        2: np.concatenate([rng.uniform(-50, top, 300), sign * 10.0 ** rng.uniform(tiny, 1.3, 400)]),
        3: np.concatenate([rng.uniform(0, 1, 400), 10.0 ** rng.uniform(tiny, 0, 300), [0.5, 0.4999999, 1.0]]),
        4: np.concatenate([rng.uniform(-20, 20, 400), rng.uniform(-lim, lim, 300), np.arange(1, 60) * np.pi / 2]),
    }
    exact_fns = {0: mpmath.tanh, 1: mpmath.exp, 2: mpmath.expm1, 3: mpmath.log1p}
    for code, x in grids.items():
        x = x.astype(dtype)
        out, out2 = np.empty_like(x), np.empty_like(x)
        _vmath(code, x, out, out2)
        pairs = [(out, mpmath.sin), (out2, mpmath.cos)] if code == 4 else [(out, exact_fns[code])]
        for got, fn in pairs:
            exact = np.array([float(fn(mpmath.mpf(float(v)))) for v in x])
            ulps, normal = _ulps(got, exact, dtype)
            assert ulps.max() <= 2.5, (code, fn, x[normal][np.argmax(ulps)], ulps.max())
            with np.errstate(over="ignore", invalid="ignore"):
                rest = exact[~normal].astype(dtype)  # overflow, underflow: inf, 0 (or subnormal)
                assert np.all((got[~normal] == rest) | (np.abs(got[~normal] - rest) <= 2 * np.finfo(dtype).tiny))
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype)
    for code, fn in ((0, np.tanh), (1, np.exp), (2, np.expm1)):
        out = np.empty_like(special)
        _vmath(code, special, out, out)
        np.testing.assert_array_equal(out, fn(special))
        assert np.array_equal(np.signbit(out[:2]), [False, code != 1])
    out, out2 = np.empty_like(special), np.empty_like(special)
    _vmath(4, special[[0, 1, 4]], out[:3], out2[:3])
    np.testing.assert_array_equal(out[:3], [0.0, -0.0, np.nan])
    assert np.signbit(out[1])
    np.testing.assert_array_equal(out2[:3], [1.0, 1.0, np.nan])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize(("name", "layer", "p"), CASES, ids=CASE_IDS)
def test_derivatives_from_the_output_are_the_kept_ones(name, layer, p, dtype):
    """Where ``φ'`` and ``φ''`` come from the output (``from_output``), the kernel's functions
    give bit for bit what ``pointwise_rows`` keeps; the others are not taken from the output."""
    if not pointwise.from_output(name, (p,)):
        assert name not in ("tanh", "exp", "identity") and not (name == "leaky_relu" and p >= 0)
        return
    code = pointwise.CODES[name]
    v = _values(dtype)
    z = v.reshape(-1, 16)
    bias = np.linspace(-1, 1, 16).astype(dtype)
    with np.errstate(all="ignore"):
        kept = _run(name, p, z, bias)
        y = np.full_like(z, np.nan)
        pointwise.output_rows(code, p, z, bias, y)
        g = np.ones((z.shape[0], 1, 16), dtype)
        c = np.full_like(g, np.nan)
        pointwise.adjoint_rows(code, p, y, g, c, True, g[0], False)
        fresh_g = np.full_like(g, np.nan)
        fresh_c = np.full_like(g, np.nan)
        pointwise.adjoint_rows(code, p, y, fresh_g, fresh_c, True, np.ones((1, 16), dtype), True)
        slope = np.full(z.size, np.nan, dtype)
        pointwise.slope_rows(code, p, y.reshape(-1), slope)
        t = np.stack([np.full(z.size, 2, dtype), np.full(z.size, -0.5, dtype)])
        pointwise.scale_rows(code, p, y.reshape(-1), t)
        seeded = np.full((2, *z.shape), np.nan, dtype)
        pointwise.seed_rows(code, p, y, np.array([np.full(16, 2), np.full(16, -0.5)], dtype), seeded[0], seeded[1])
    np.testing.assert_array_equal(y, kept[0])
    np.testing.assert_array_equal(g[:, 0], kept[1])
    np.testing.assert_array_equal(c[:, 0], kept[2])
    np.testing.assert_array_equal(fresh_g, g)
    np.testing.assert_array_equal(fresh_c, c)
    np.testing.assert_array_equal(slope, kept[1].reshape(-1))
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(t, np.stack([2 * kept[1].reshape(-1), -0.5 * kept[1].reshape(-1)]))
        np.testing.assert_array_equal(seeded, np.stack([2 * kept[1], -0.5 * kept[1]]))
