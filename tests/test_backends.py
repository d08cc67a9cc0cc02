"""Backend behaviour: results keep the input's kind, dtype and device; Hessians are symmetric;
``jax.jit`` works; Dask stays lazy; torch autograd flows through the results."""

from __future__ import annotations

import numpy as np
import pytest
from backends import backend_cases, leaves, make_backend, materialize, same_kind
from reference import assert_close, build_hessarray, cached_torch_reference, torch_forward

import hessarray as ha

_rng = np.random.default_rng(4)
D, N, M, BATCH = 3, 5, 2, 4
X = _rng.standard_normal((BATCH, D))
W1, B1 = _rng.standard_normal((N, D)) / 2, _rng.standard_normal((N, 1))
W2 = _rng.standard_normal((M, N)) / 2
SPEC = [("dense", W1, B1), ("act", "softplus"), ("dense", W2, None), ("act", "tanh")]
SCALAR_SPEC = [*SPEC, ("ce", _rng.integers(0, M, size=BATCH))]


def _all_results(model, x, scalar: bool) -> dict:
    out = {
        "model(x)": model(x),
        "derivatives": ha.derivatives(model, x),
        "jacobian": ha.jacobian(model, x),
        "hessian": ha.hessian(model, x, mode="reverse"),
        "wrt": ha.derivatives(model, x, wrt="0.bias"),
        "wrt per sample": ha.derivatives(model, x, wrt="2.weight", per_sample=True),
        "jacobian wrt": ha.jacobian(model, x, wrt="0.weight"),
    }
    if not scalar:  # (the scalar model's labels are per sample: they need the whole batch)
        out["1-D x"] = ha.derivatives(model, x[0, ...])
    if scalar:
        out["gradient"] = ha.gradient(model, x, mode="forward")
    return out


KIND_CASES = ["vector-float64", "vector-float32", "scalar-float64", "scalar-float32"]


@pytest.mark.parametrize("xp,case", backend_cases(KIND_CASES, ["scalar-float64"]), indirect=["xp"])
def test_results_keep_kind_dtype_device(xp, case):
    output, dtype = case.split("-")
    scalar = output == "scalar"
    spec = SCALAR_SPEC if scalar else SPEC
    np_dtype = np.dtype(dtype)
    x = xp.asarray(X.astype(np_dtype))
    model = build_hessarray(spec, lambda a: xp.asarray(a.astype(np_dtype) if a.dtype.kind == "f" else a))
    res = _all_results(model, x, scalar)
    for name, r in res.items():
        for a in leaves(r):
            assert same_kind(a, x), f"{name}: {type(a)} is not of the input's kind {type(x)}"
            assert a.dtype == x.dtype, f"{name}: {a.dtype} != {x.dtype}"
            assert xp.device_of(a) == xp.device, f"{name}: on {xp.device_of(a)}, not {xp.device}"
    if xp.name == "array_api_strict:device1":
        import array_api_strict

        assert res["derivatives"].hessian.device == array_api_strict.Device("device1")
    got = materialize(xp, res)
    ref = cached_torch_reference(spec, X, None)
    tol = 1e-10 if dtype == "float64" else 1e-4
    assert_close(got["derivatives"].hessian, ref["hessian"], tol, "hessian")
    assert_close(got["model(x)"], ref["value"], tol, "value")


def test_hessians_symmetric(xp):
    model = build_hessarray(SCALAR_SPEC, xp.asarray)
    vec = build_hessarray(SPEC, xp.asarray)
    x = xp.asarray(X)
    res = {}
    for mode in ("forward", "reverse"):
        res[mode] = (ha.hessian(model, x, mode=mode), ha.hessian(vec, x, mode=mode))
    for mode, (h, hv) in materialize(xp, res).items():
        assert_close(h, np.swapaxes(h, -1, -2), 1e-15, f"scalar model ({mode})")
        assert_close(hv, np.swapaxes(hv, -1, -2), 1e-15, f"vector model ({mode})")
        assert np.max(np.abs(h)) > 1e-3  # not trivially symmetric


# -- JAX ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("xp", ["jax", "jax:cuda"], indirect=True)
def test_jax_jit(xp):
    """``jax.jit(lambda x: ha.hessian(model, x))(x)`` works, with the model's arrays closed over."""
    import jax

    model = build_hessarray(SCALAR_SPEC, xp.asarray)
    x = xp.asarray(X)
    ref = cached_torch_reference(SCALAR_SPEC, X, "0.weight")
    h = jax.jit(lambda x: ha.hessian(model, x))(x)
    assert_close(np.asarray(h), ref["hessian"], 1e-10, "jit hessian")
    d = jax.jit(lambda x: ha.derivatives(model, x, mode="reverse", chunk_size=3))(x)
    assert_close(np.asarray(d.jacobian), ref["jacobian"], 1e-10, "jit jacobian")
    p = jax.jit(lambda x: ha.hessian(model, x, wrt="0.weight"))(x)
    assert_close(np.asarray(p), ref["p_hess"], 1e-10, "jit d2/dW2")


@pytest.mark.parametrize("xp", ["jax", "jax:cuda"], indirect=True)
def test_jax_jit_model_built_inside(xp):
    """The model may also be built inside the jitted function from traced parameters."""
    import jax

    ref = cached_torch_reference(SCALAR_SPEC, X, "0.weight")
    params = {"W1": xp.asarray(W1), "b1": xp.asarray(B1), "W2": xp.asarray(W2)}
    labels = xp.asarray(SCALAR_SPEC[-1][1])

    @jax.jit
    def hess(params, x):
        model = ha.Sequential(
            ha.Dense(params["W1"], params["b1"]),
            ha.Softplus(),
            ha.Dense(params["W2"]),
            ha.Tanh(),
            ha.SoftmaxCrossEntropy(labels),
        )
        return ha.hessian(model, x), ha.hessian(model, x, wrt="0.weight")

    h, p = hess(params, xp.asarray(X))
    assert_close(np.asarray(h), ref["hessian"], 1e-10, "jit hessian")
    assert_close(np.asarray(p), ref["p_hess"], 1e-10, "jit d2/dW2")


# -- Dask -----------------------------------------------------------------------------------------
def test_dask_stays_lazy():
    import dask.array as da
    from dask.callbacks import Callback

    xp = make_backend("dask")

    class Count(Callback):
        computed = 0

        def _start(self, dsk):
            Count.computed += 1

    model = build_hessarray(SCALAR_SPEC, xp.asarray)
    x = xp.asarray(X)
    with Count():
        res = {
            "derivatives": ha.derivatives(model, x, chunk_size=3),
            "reverse": ha.derivatives(model, x, mode="reverse"),
            "wrt": ha.derivatives(model, x, wrt="0.weight"),
            "per sample": ha.hessian(model, x, wrt="2.weight", per_sample=True, chunk_size=2),
            "model(x)": model(x),
            "plan": ha.plan(model, x),
        }
    assert Count.computed == 0, "hessarray computed a Dask graph while building the result"
    for a in leaves({k: v for k, v in res.items() if k != "plan"}):
        assert isinstance(a, da.Array)
    # the Dask path keeps its own chunking: the default plan is one block
    assert res["plan"].chunk_size == BATCH
    with Count():
        got = materialize(xp, res["derivatives"])
    assert Count.computed >= 1  # the callback does see computations
    ref = cached_torch_reference(SCALAR_SPEC, X, None)
    assert_close(got.hessian, ref["hessian"], 1e-10, "hessian")


# -- torch autograd ---------------------------------------------------------------------------------
@pytest.mark.parametrize("xp", ["torch", "torch:cuda"], indirect=True)
def test_torch_autograd_through_results(xp):
    """``ha.hessian(model, x).sum().backward()`` gives the gradients torch.func + autograd give."""
    import torch

    labels = SCALAR_SPEC[-1][1]

    def leaf(a):
        return xp.asarray(a).requires_grad_(True)

    W1t, b1t, W2t, xt = leaf(W1), leaf(B1), leaf(W2), leaf(X)
    model = ha.Sequential(
        ha.Dense(W1t, b1t), ha.Softplus(), ha.Dense(W2t), ha.Tanh(), ha.SoftmaxCrossEntropy(xp.asarray(labels))
    )
    for mode in ("forward", "reverse"):
        for W in (W1t, b1t, W2t, xt):
            W.grad = None
        h = ha.hessian(model, xt, mode=mode, chunk_size=3)
        g = ha.gradient(model, xt, mode=mode)
        assert h.requires_grad and g.requires_grad
        (h.sum() + (g**2).sum()).backward()
        got = [W.grad.detach().cpu().numpy() for W in (W1t, b1t, W2t, xt)]

        # the same quantity in pure torch, differentiated with autograd
        W1r, b1r, W2r, xr = (leaf(a) for a in (W1, B1, W2, X))
        spec = [("dense", None, B1), ("act", "softplus"), ("dense", None, None), ("act", "tanh")]
        params = {"0.weight": W1r, "0.bias": b1r, "2.weight": W2r}

        def loss(xi, label, spec=spec, params=params):
            z = torch_forward(spec, params, xi[None])[0]
            return -torch.log_softmax(z, dim=-1)[label]

        H = torch.stack([torch.func.hessian(loss)(xr[i], int(labels[i])) for i in range(BATCH)])
        G = torch.stack([torch.func.jacrev(loss)(xr[i], int(labels[i])) for i in range(BATCH)])
        want = torch.autograd.grad(H.sum() + (G**2).sum(), (W1r, b1r, W2r, xr))
        for a, b, name in zip(got, want, ("W1", "b1", "W2", "x"), strict=True):
            b = b.detach().cpu().numpy()
            assert np.max(np.abs(b)) > 1e-3, name
            assert_close(a, b, 1e-10, f"d/d{name} of sum(hessian) + |gradient|^2 ({mode})")


@pytest.mark.parametrize("xp", ["torch", "torch:cuda"], indirect=True)
def test_torch_autograd_through_parameter_hessian(xp):
    """Third derivatives: d/dx of the summed parameter Hessian, through hessarray and torch."""
    import torch

    def leaf(a):
        return xp.asarray(a).requires_grad_(True)

    xt = leaf(X)
    spec = [("dense", W1, None), ("act", "tanh"), ("sum",)]
    model = build_hessarray(spec, xp.asarray)
    ha.hessian(model, xt, wrt="0.weight").sum().backward()

    xr = leaf(X)
    Wr = xp.asarray(W1)

    def total(W):
        return torch_forward(spec, {"0.weight": W}, xr).sum()

    H = torch.func.hessian(total)(Wr)
    (want,) = torch.autograd.grad(H.sum(), xr)
    assert_close(xt.grad.detach().cpu().numpy(), want.detach().cpu().numpy(), 1e-10, "d/dx sum d2/dW2")
