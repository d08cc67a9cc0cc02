"""NumPy's compiled generic loops (numba, ``hessarray/_numpy/loops.py``) and helpers
(``hessarray/_numpy/arrays.py``) against the portable path they stand beside.

The rest of the suite runs the NumPy backend with them on (the default when numba is
installed); here each one is compared with the portable code directly, including where it
must not apply, NaN and infinity, and whole models with the compiled code switched off.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import hessarray as ha
from hessarray import _numpy, tuning
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
        # hessQuik's block, with and without a bias
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


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("1", True), ("", True)])
def test_environment_switch(value, expected):
    code = "import hessarray._numpy as f; print(f.ENABLED)"
    env = dict(os.environ, HESSARRAY_NUMBA=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


# The optional package blocked at import, and what must then hold in that process.
WITHOUT = {
    "numba": "assert _numpy.numba is None and not _numpy.ENABLED\n",
    # numba's np.dot needs SciPy: only the whole-network kernels go, the generic loops stay.
    "scipy": "assert _numpy.ENABLED and ha.plan(m, x).executor == 'portable'\n",
}


@pytest.mark.parametrize("blocked", list(WITHOUT))
def test_without_optional_packages_the_portable_paths_run(blocked):
    """numba and SciPy are optional: blocked at import, the compiled code that needs them is
    off and the results are unchanged."""
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "import numpy as np, hessarray as ha\n"
        "from hessarray import _numpy\n"
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


def test_delegation_serves_numpy_and_leaves_other_backends_to_the_portable_code():
    """Each fast path of ``hessarray._delegation`` gives the portable result on NumPy, and
    ``None`` (the caller's portable code runs) for another namespace."""
    import array_api_strict as strict

    from hessarray import _delegation
    from hessarray._backend import add_diagonal, identity, repeat_view

    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 4))
    view = repeat_view(np, a, 1, 5)
    assert view.shape == (3, 5, 4) and np.shares_memory(view, a) and not view.flags.writeable
    np.testing.assert_array_equal(view, np.broadcast_to(a[:, None, :], (3, 5, 4)))
    strided = repeat_view(np, a[:, ::2], 0, 2)  # not contiguous: broadcast_to
    np.testing.assert_array_equal(strided, np.broadcast_to(a[None, :, ::2], (2, 3, 2)))
    eye = identity(np, 4, a.astype(np.float32))
    assert eye is identity(np, 4, np.ones(1, np.float32)) and eye.dtype == np.float32 and not eye.flags.writeable
    h, c = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4))
    want = h + c[..., :, None] * np.eye(4)
    mine = h.copy()
    assert add_diagonal(np, mine, c, owned=True) is mine, "an owned temporary: in place"
    np.testing.assert_array_equal(mine, want)
    kept = h.copy()
    np.testing.assert_array_equal(add_diagonal(np, kept, c), want)
    np.testing.assert_array_equal(kept, h)
    dense = ha.Dense(rng.standard_normal((5, 4)), rng.standard_normal(5))
    y, cache = dense.forward(a)
    assert cache[2].flags.c_contiguous, "a small Wᵀ is copied contiguous"
    np.testing.assert_allclose(y, a @ dense.weight.T + dense.bias, rtol=1e-14)

    s = strict.asarray(a)
    assert _delegation.repeat_view(strict, s, 0, 2) is None
    assert _delegation.identity(strict, 3, s) is None
    assert _delegation.dense_forward(s, strict.asarray(dense.weight), None) is None
    assert _delegation.symmetrize(strict, strict.asarray(h), True) is None
    assert _delegation.matmul_rows(strict, s, 3, strict.asarray(a.T)) is None
    assert _delegation.blas_operand(strict, s) is s
    assert _delegation.plan_key(s) is None and _delegation.input_key(s) is None
    assert not _delegation.threaded_blocks(strict) and _delegation.threaded_blocks(np)
    assert _delegation.plan_key(a)[:2] == (a.dtype, _numpy.ENABLED)
