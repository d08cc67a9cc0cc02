"""Derivatives with respect to parameters: shapes, summing, per-sample results, every name."""

from __future__ import annotations

import numpy as np
import pytest
from backends import backend_cases, materialize
from reference import assert_close, build_hessarray, cached_torch_reference, param_arrays

import hessarray as ha

RTOL = 1e-10
_rng = np.random.default_rng(2)
D, N, M, BATCH = 3, 5, 2, 4  # the shapes of the other test files (JAX compiles once)
X = _rng.standard_normal((BATCH, D))
# a vector-output model touching every kind of parameter: row and column biases, no bias,
# and parameters inside a residual block
VECTOR_SPEC = [
    ("dense", _rng.standard_normal((N, D)) / 2, _rng.standard_normal((N, 1))),
    ("act", "tanh"),
    ("residual", 0.5, [("dense", _rng.standard_normal((N, N)) / 2, _rng.standard_normal(N)), ("act", "softplus")]),
    ("dense", _rng.standard_normal((M, N)) / 2, None),
    ("act", "sin"),
]
SCALAR_SPEC = [*VECTOR_SPEC, ("mse", _rng.standard_normal((BATCH, M)))]
NAMES = ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.weight"]
SPECS = {"vector": VECTOR_SPEC, "scalar": SCALAR_SPEC}


def test_parameter_names_in_order():
    model = build_hessarray(SCALAR_SPEC, np.asarray)
    params = model.parameters()
    assert list(params) == NAMES
    assert list(param_arrays(SCALAR_SPEC)) == NAMES
    # the arrays themselves, not copies
    assert params["0.weight"] is model[0].weight
    assert params["2.0.bias"] is model[2].layers[0].bias
    assert params["0.bias"].shape == (N, 1)


CASES = [f"{wrt}-{output}" for wrt in NAMES for output in SPECS]


@pytest.mark.parametrize("xp,case", backend_cases(CASES, ["0.bias-scalar", "2.0.weight-vector"]), indirect=["xp"])
def test_parameter_derivatives(xp, case):
    wrt, output = case.split("-")
    spec = SPECS[output]
    ref = cached_torch_reference(spec, X, wrt)
    shape = param_arrays(spec)[wrt].shape
    o = () if output == "scalar" else (M,)
    model = build_hessarray(spec, xp.asarray)
    x = xp.asarray(X)
    got = {}
    for mode in ("forward", "reverse"):
        got[mode] = {
            "summed": ha.derivatives(model, x, wrt=wrt, mode=mode, chunk_size=2),
            "per_sample": ha.derivatives(model, x, wrt=wrt, mode=mode, per_sample=True, chunk_size=2),
            "gradient": ha.gradient(model, x, wrt=wrt, mode=mode),
            "hessian": ha.hessian(model, x, wrt=wrt, mode=mode),
            "jacobian": ha.jacobian(model, x, wrt=wrt, mode=mode),
            "gradient_ps": ha.gradient(model, x, wrt=wrt, mode=mode, per_sample=True),
            "hessian_ps": ha.hessian(model, x, wrt=wrt, mode=mode, per_sample=True),
        }
    got = materialize(xp, got)
    for mode, r in got.items():
        s, ps = r["summed"], r["per_sample"]
        # shapes: summed over batch and outputs, or (batch,) + o in front
        assert s.value.shape == () and s.jacobian.shape == shape and s.hessian.shape == shape + shape
        assert ps.value.shape == (BATCH, *o)
        assert ps.jacobian.shape == (BATCH, *o, *shape)
        assert ps.hessian.shape == (BATCH, *o, *shape, *shape)
        what = f"{wrt} ({output}, {mode})"
        assert_close(s.value, ref["p_value"], RTOL, f"value {what}")
        for g in (s.jacobian, r["gradient"]):
            assert_close(g, ref["p_grad"], RTOL, f"gradient {what}")
        for h in (s.hessian, r["hessian"]):
            assert_close(h, ref["p_hess"], RTOL, f"hessian {what}")
        assert_close(ps.value, ref["value"], RTOL, f"per-sample value {what}")
        for j in (ps.jacobian, r["jacobian"], r["gradient_ps"]):
            assert_close(j, ref["p_jac"], RTOL, f"per-sample gradient {what}")
        for h in (ps.hessian, r["hessian_ps"]):
            assert_close(h, ref["p_hess_ps"], RTOL, f"per-sample hessian {what}")
        # per_sample=True summed over the batch and outputs gives the summed results
        lead = tuple(range(1 + len(o)))
        assert_close(ps.value.sum(), s.value, 1e-13, "sum of per-sample values")
        assert_close(ps.jacobian.sum(axis=lead), s.jacobian, 1e-13, "sum of per-sample gradients")
        assert_close(ps.hessian.sum(axis=lead), s.hessian, 1e-13, "sum of per-sample hessians")


def test_parameter_hessians_are_symmetric(xp):
    model = build_hessarray(SCALAR_SPEC, xp.asarray)
    for wrt in NAMES:
        for mode in ("forward", "reverse"):
            h = xp.to_numpy(ha.hessian(model, xp.asarray(X), wrt=wrt, mode=mode))
            k = int(np.prod(param_arrays(SCALAR_SPEC)[wrt].shape))
            h = h.reshape(k, k)
            assert_close(h, h.T, 1e-14, f"{wrt} ({mode})")


def test_parameter_derivatives_one_dimensional_x():
    """With ``x`` of shape ``(d,)`` per-sample results lose the batch axis."""
    model = build_hessarray(VECTOR_SPEC, np.asarray)
    shape = (N, D)
    ps2 = ha.derivatives(model, X[:1], wrt="0.weight", per_sample=True)
    ps1 = ha.derivatives(model, X[0], wrt="0.weight", per_sample=True)
    assert ps1.value.shape == (M,) and ps1.jacobian.shape == (M, *shape) and ps1.hessian.shape == (M, *shape, *shape)
    for a, b in zip(ps1, ps2, strict=True):
        assert_close(a, b[0], 1e-14)
    j1 = ha.jacobian(model, X[0], wrt="0.weight")
    assert_close(j1, ps2.jacobian[0], 1e-14)
    s1 = ha.derivatives(model, X[0], wrt="0.weight")
    s2 = ha.derivatives(model, X[:1], wrt="0.weight")
    for a, b in zip(s1, s2, strict=True):
        assert_close(a, b, 1e-14)


def test_parameter_derivatives_follow_the_parameter_values():
    """Changing a parameter's value changes its derivatives as autodiff says (not cached)."""
    spec = [("dense", np.eye(D), None), ("act", "tanh"), ("sum",)]
    a = ha.hessian(build_hessarray(spec, np.asarray), X, wrt="0.weight")
    spec2 = [("dense", 2 * np.eye(D), None), ("act", "tanh"), ("sum",)]
    b = ha.hessian(build_hessarray(spec2, np.asarray), X, wrt="0.weight")
    assert_close(a, cached_torch_reference(spec, X, "0.weight")["p_hess"], RTOL)
    assert_close(b, cached_torch_reference(spec2, X, "0.weight")["p_hess"], RTOL)
    assert np.max(np.abs(a - b)) > 1e-3
