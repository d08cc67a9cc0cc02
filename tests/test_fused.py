"""The fused NumPy kernels (numba) against the portable path they stand beside.

The rest of the suite runs the NumPy backend with them on (the default when numba is
installed); here each kernel is compared with the portable code directly, including where it
must not apply, NaN and infinity, and whole models with the kernels switched off.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import hessarray as ha
from hessarray import _fused, tuning
from hessarray.engine.forward import contract
from hessarray.layers.base import Contracted

pytest.importorskip("numba")

PARTS = ("full", "diag", "trace")
TOL = {np.float64: 1e-13, np.float32: 2e-5}

ACTIVATIONS = {
    "tanh": ha.Tanh(),
    "sigmoid": ha.Sigmoid(),
    "softplus": ha.Softplus(2.0),
    "elu": ha.ELU(),
    "silu": ha.SiLU(),
    "logcosh": ha.LogCosh(),
    "sin": ha.Sin(),
    "square": ha.Square(),
    "cube": ha.Elementwise(lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z),
}


def _operands(dtype, k, m, batch=7, n=9, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((batch, n)).astype(dtype)
    t = rng.standard_normal((k, batch, n)).astype(dtype)
    g = rng.standard_normal((batch, m, n)).astype(dtype)
    return z, t, g


def _terms(factors, part):
    total = None
    for f in factors:
        term = contract(np, f, part)
        total = term if total is None else total + term
    return total


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("k", [1, 2, 3, tuning.MAX_K])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_push_curvature_matches_portable(portable, name, k, m, dtype):
    layer = ACTIVATIONS[name]
    z, t, g = _operands(dtype, k, m)
    _, cache = layer.forward(z)
    t_fused, factors = layer.push(cache, t, g)
    assert len(factors) == 1 and isinstance(factors[0], Contracted)
    with portable():
        _, cache_p = layer.forward(z)
        t_port, factors_p = layer.push(cache_p, t, g)
    assert not isinstance(factors_p[0], Contracted)
    assert t_fused.dtype == dtype and factors[0].term.dtype == dtype
    np.testing.assert_allclose(t_fused, t_port, rtol=TOL[dtype], atol=0)
    for part in PARTS:
        want = _terms(factors_p, part)
        got = _terms(factors, part)
        assert got.shape == want.shape
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * 10 * scale)
    full = factors[0].term
    np.testing.assert_array_equal(full, np.swapaxes(full, -1, -2))  # both halves written


def test_tanh_derivatives_match_portable(portable):
    z = np.linspace(-30, 30, 600).reshape(3, -1)
    f, df, d2f = ha.Tanh().derivatives(np, z)
    with portable():
        f_p, df_p, d2f_p = ha.Tanh().derivatives(np, z)
    np.testing.assert_array_equal(f, f_p)
    # 1 - f² cancels for large |z|: a fused multiply-add may round it differently, so the
    # comparison is absolute, against φ' ≤ 1 and |φ''| ≤ 0.77.
    np.testing.assert_allclose(df, df_p, rtol=0, atol=4e-16)
    np.testing.assert_allclose(d2f, d2f_p, rtol=0, atol=4e-16)
    z32 = z.astype(np.float32)
    assert all(a.dtype == np.float32 for a in ha.Tanh().derivatives(np, z32))
    for shape in [(600,), (3, 4, 50)]:  # arrays that are not (B, n): as one row
        got = _fused.tanh_derivatives(np.tanh(z).reshape(shape))
        np.testing.assert_array_equal(got[0].reshape(df.shape), df)
        np.testing.assert_array_equal(got[1].reshape(d2f.shape), d2f)


def test_push_curvature_falls_back_where_it_does_not_apply(portable):
    layer = ha.Tanh()
    z, t, g = _operands(np.float64, tuning.MAX_K + 1, 1)
    _, cache = layer.forward(z)
    _, factors = layer.push(cache, t, g)
    assert not isinstance(factors[0], Contracted), "too many directions: per-sample GEMMs"
    z, t, g = _operands(np.float64, 2, 1)
    _, cache = layer.forward(z)
    shared = np.broadcast_to(t[:, :1, :], t.shape)  # tangents shared by all samples
    _, factors = layer.push(cache, shared, g)
    assert factors[0][0] is shared, "broadcast tangents stay a triple, for the engine's GEMM"
    strided = np.asarray(np.random.default_rng(3).standard_normal((2, 7, 18)))[:, :, ::2]
    _, factors = layer.push(cache, strided, g)
    assert not isinstance(factors[0], Contracted), "non-contiguous operands take the portable path"
    mixed = t.astype(np.float32)
    _, factors = layer.push(cache, mixed, g)
    assert not isinstance(factors[0], Contracted), "mixed dtypes take the portable path"
    _, factors = layer.push(cache, t)
    assert factors == [], "no adjoints, no curvature"
    with portable():
        _, factors = layer.push(cache, t, g)
    assert not isinstance(factors[0], Contracted)


def test_push_curvature_keeps_nan_and_inf(portable):
    layer = ha.Tanh()
    z, t, g = _operands(np.float64, 2, 2)
    t[1, 3, 4] = np.nan
    g[5, 1, 0] = np.inf
    _, cache = layer.forward(z)
    _, factors = layer.push(cache, t, g)
    with portable():
        _, factors_p = layer.push(cache, t, g)
    got, want = _terms(factors, "full"), _terms(factors_p, "full")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert finite.sum() > 0 and not np.isfinite(want).all()
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-13)


def _model(d, m):
    rng = np.random.default_rng(d + 10 * m)
    w = 6
    return ha.Sequential(
        ha.Dense(rng.standard_normal((w, d)) / np.sqrt(d), rng.standard_normal(w)),
        ha.Tanh(),
        ha.Residual(ha.Dense(rng.standard_normal((w, w)) / np.sqrt(w)), ha.Sigmoid(), h=0.5),
        # hessQuik's block, with and without a bias: the fused residual loops
        ha.Residual(ha.Dense(rng.standard_normal((w, w)) / np.sqrt(w), rng.standard_normal(w)), ha.Tanh(), h=0.7),
        ha.Residual(ha.Dense(rng.standard_normal((w, w)) / np.sqrt(w)), ha.Tanh(), h=0.5),
        ha.Dense(rng.standard_normal((w, w)) / np.sqrt(w), rng.standard_normal(w)),
        ha.SiLU(),
        ha.Dense(rng.standard_normal((m, w)) / np.sqrt(w)),
        *([ha.Sum()] if m == 1 else []),
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("d,m", [(1, 1), (2, 1), (4, 1), (3, 2), (6, 1)])
def test_models_agree_with_and_without_the_kernels(portable, d, m, dtype):
    model = _model(d, m)
    x = np.random.default_rng(5).standard_normal((37, d)).astype(dtype)
    v = np.random.default_rng(6).standard_normal((37, d)).astype(dtype)
    calls = {
        "derivatives": lambda: tuple(ha.derivatives(model, x, mode="forward", chunk_size=16)),
        "reverse": lambda: tuple(ha.derivatives(model, x, mode="reverse", chunk_size=16)),
        "diagonal": lambda: (ha.hessian_diagonal(model, x),),
        "laplacian": lambda: (ha.laplacian(model, x),),
        "hvp": lambda: (ha.hvp(model, x, v),),
    }
    for name, call in calls.items():
        fused = call()
        with portable():
            plain = call()
        for a, b in zip(fused, plain):
            assert a.dtype == dtype, name
            np.testing.assert_allclose(a, b, rtol=TOL[dtype] * 100, atol=TOL[dtype] * 100 * np.max(np.abs(b)))


def _tanh_block(dtype, n, bias=True, h=0.7, seed=0):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal(n).astype(dtype) if bias else None
    return ha.Residual(ha.Dense((rng.standard_normal((n, n)) / np.sqrt(n)).astype(dtype), b), ha.Tanh(), h=h)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("k,m", [(1, 1), (3, 1), (2, 3), (tuning.MAX_K, 1)])
def test_residual_tanh_block_matches_portable(portable, k, m, bias, dtype):
    """Each pass of ``x + h tanh(W x + b)`` (value, adjoints, tangents with curvature) as one
    fused loop against the layers' own portable passes."""
    n, batch = 5, 7
    block = _tanh_block(dtype, n, bias)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, n)).astype(dtype)
    g = rng.standard_normal((batch, m, n)).astype(dtype)
    t = rng.standard_normal((k, batch, n)).astype(dtype)
    dense = block.layers[0]
    assert _fused.residual_tanh_forward(x, dense.weight, dense._b, block.h) is not None, "the loops apply"
    results = []
    for off in (False, True):
        if off:
            ctx = portable()
            ctx.__enter__()
        y, cache = block.forward(x)
        pulled = block.pull(cache, g)
        t_out, factors = block.push(cache, t, g)
        results.append((y, pulled, t_out, _terms(factors, "full"), cache))
        if off:
            ctx.__exit__(None, None, None)
    (y, pulled, t_out, term, cache), (y_p, pulled_p, t_out_p, term_p, cache_p) = results
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(y, y_p, **tol)
    np.testing.assert_allclose(pulled, pulled_p, **tol)
    np.testing.assert_allclose(t_out, t_out_p, **tol)
    np.testing.assert_allclose(term, term_p, **tol)
    np.testing.assert_array_equal(term, np.swapaxes(term, -1, -2))
    for step, step_p in zip(cache[1], cache_p[1]):  # what the other passes read: z, f, φ', φ''
        np.testing.assert_allclose(step.y, step_p.y, **tol)
    for a, b in zip(cache[1][1].cache, cache_p[1][1].cache):
        np.testing.assert_allclose(a, b, **tol)
    assert all(a.dtype == dtype for a in (y, pulled, t_out, term))


def test_residual_tanh_block_falls_back_where_it_does_not_apply(portable):
    n = 8
    block = _tanh_block(np.float64, n)
    w, b = block.layers[0].weight, block.layers[0]._b
    big = np.zeros((tuning.RESIDUAL_WORK // n**2 + 1, n))
    assert _fused.residual_tanh_forward(big, w, b, 0.5) is None, "big blocks: BLAS and NumPy's tanh"
    assert _fused.residual_tanh_forward(big[:4], w, b, 0.5) is not None
    assert _fused.residual_tanh_forward(big[:4].astype(np.float32), w, b, 0.5) is None, "mixed dtypes"
    assert _fused.residual_tanh_forward(np.zeros((4, 2 * n))[:, ::2], w, b, 0.5) is None, "strided x"
    x = np.random.default_rng(0).standard_normal((4, n))
    g = np.ones((4, 1, n))
    _, cache = block.forward(x)
    df, d2f = cache[1][1].cache
    t = np.ones((tuning.MAX_K + 1, 4, n))
    w_t = np.ascontiguousarray(w.T)
    assert _fused.residual_tanh_push(t, w_t, df, d2f, g, 0.5) is None, "too many directions"
    assert _fused.residual_tanh_push(np.broadcast_to(t[:2, :1], (2, 4, n)), w_t, df, d2f, g, 0.5) is None
    assert _fused.residual_tanh_push(t[:2], w.T, df, d2f, g, 0.5) is None, "a transposed view of W"
    assert _fused.residual_tanh_push(t[:2], w_t, df, d2f, g, 0.5) is not None
    assert _fused.residual_tanh_pull(np.ones((tuning.RESIDUAL_WORK // n**2 + 1, 1, n)), w, df, 0.5) is None
    # Big and mixed blocks still give the layers' results (through the portable passes).
    xb = np.random.default_rng(1).standard_normal(big.shape)
    y, _ = block.forward(xb)
    with portable():
        y_p, _ = block.forward(xb)
    np.testing.assert_array_equal(y, y_p)
    with portable():
        assert _fused.residual_tanh_forward(x, w, b, 0.5) is None, "switched off"


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("1", True), ("", True)])
def test_environment_switch(value, expected):
    code = "import hessarray._fused as f; print(f.ENABLED)"
    env = dict(os.environ, HESSARRAY_NUMBA=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


# The optional package blocked at import, and what must then hold in that process.
WITHOUT = {
    "numba": "assert _fused.numba is None and not _fused.ENABLED\n",
    "scipy": (  # numba's np.dot needs SciPy: only the whole-network kernels go
        "from hessarray.engine import tanh_mlp, tanh_resnet\n"
        "assert _fused.ENABLED and not tanh_mlp._HAVE_BLAS\n"
        "assert tanh_mlp.tanh_mlp_derivatives(m.layers, x, 'full') is None\n"
        "assert not hasattr(tanh_resnet, '_tanh_resnet')\n"
    ),
}


@pytest.mark.parametrize("blocked", list(WITHOUT))
def test_without_optional_packages_the_portable_paths_run(blocked):
    """numba and SciPy are optional: blocked at import, the kernels that need them are off
    and the results are unchanged."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import numpy as np, hessarray as ha\n"
        "from hessarray import _fused\n"
        "rng = np.random.default_rng(0)\n"
        "w1, w2 = rng.standard_normal((6, 3)), rng.standard_normal((1, 6))\n"
        "m = ha.Sequential(ha.Dense(w1), ha.Tanh(), ha.Dense(w2), ha.Sum())\n"
        "x = rng.standard_normal((5, 3))\n" + WITHOUT[blocked] + "np.save(sys.argv[1], ha.hessian(m, x))\n"
    )
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "h.npy")
        subprocess.run([sys.executable, "-c", code, path], check=True, capture_output=True, text=True)
        plain = np.load(path, allow_pickle=False)
    rng = np.random.default_rng(0)
    m = ha.Sequential(ha.Dense(rng.standard_normal((6, 3))), ha.Tanh(), ha.Dense(rng.standard_normal((1, 6))), ha.Sum())
    np.testing.assert_allclose(ha.hessian(m, rng.standard_normal((5, 3))), plain, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", [(3, 1, 5, 5), (4, 2, 64, 64), (2, 1, 1)])
def test_symmetrize_in_place_matches_portable(portable, dtype, shape):
    from hessarray._backend import symmetrize

    h = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    with portable():
        expected = symmetrize(np, h.copy(), owned=True)
    mine = h.copy()
    got = symmetrize(np, mine, owned=True)
    assert got is mine, "an owned temporary is symmetrized in place"
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, np.swapaxes(got, -1, -2))
    kept = h.copy()
    other = symmetrize(np, kept)  # not owned: the caller's array is left alone
    np.testing.assert_array_equal(kept, h)
    np.testing.assert_array_equal(other, expected)
    frozen = h.copy()
    frozen.flags.writeable = False  # read-only or strided: a new array
    got = symmetrize(np, frozen, owned=True)
    assert not np.shares_memory(got, frozen)
    np.testing.assert_array_equal(got, expected)
    strided = np.swapaxes(h.copy(), -1, -2)
    np.testing.assert_array_equal(symmetrize(np, strided, owned=True), expected)


@pytest.mark.parametrize("k", [tuning.SPLIT_K, 50])
def test_split_contraction_matches_one_product(k):
    """NumPy float32, many directions: ``tᵀ diag(c) t`` as two products and a mirror."""
    rng = np.random.default_rng(k)
    t = rng.standard_normal((k, 9, 13)).astype(np.float32)
    c = rng.standard_normal((9, 1, 13)).astype(np.float32)
    got = contract(np, (t, c, t), "full")
    want = np.einsum("ibr,bor,jbr->boij", t.astype(np.float64), c.astype(np.float64), t.astype(np.float64))
    assert got.shape == (9, 1, k, k) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.max(np.abs(want)))
    k1 = tuning.SPLIT_COLUMNS  # the block above the trailing one is its mirror
    np.testing.assert_array_equal(got[..., :k1, k1:], np.swapaxes(got[..., k1:, :k1], -1, -2))
    # Not for a non-symmetric triple: the one-product path.
    other = rng.standard_normal(t.shape).astype(np.float32)
    want_lr = np.einsum("ibr,bor,jbr->boij", t, c, other)
    np.testing.assert_allclose(contract(np, (t, c, other), "full"), want_lr, rtol=1e-4, atol=1e-3)
