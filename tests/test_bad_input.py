"""Bad input: clear errors naming what is wrong; NaN/inf and empty batches handled quietly."""

from __future__ import annotations

import re

import numpy as np
import pytest
from backends import SLOW, backend_cases, make_backend, materialize
from reference import assert_close, build_hessarray, cached_torch_reference

import hessarray as ha

_rng = np.random.default_rng(5)
D, N, M, BATCH = 3, 5, 2, 4
W1, B1 = _rng.standard_normal((N, D)) / 2, _rng.standard_normal(N)
W2 = _rng.standard_normal((M, N)) / 2
X = _rng.standard_normal((BATCH, D))
LABELS = _rng.integers(0, M, size=BATCH)
SPEC = [("dense", W1, B1), ("act", "tanh"), ("dense", W2, None)]
SCALAR_SPEC = [*SPEC, ("ce", LABELS)]
MODES = ("forward", "reverse")


def _model(xp, spec=SCALAR_SPEC):
    return build_hessarray(spec, xp.asarray)


# -- shapes ---------------------------------------------------------------------------------------
def test_wrong_input_width(xp):
    model = _model(xp)
    x = xp.asarray(np.ones((BATCH, 5)))
    for call in (model, ha.hessian, ha.jacobian, ha.derivatives):
        with pytest.raises(ValueError) as info:
            call(x) if call is model else call(model, x)
        msg = str(info.value)
        assert "layer 0" in msg, msg
        assert "(5, 3)" in msg, msg  # the weight's shape
        assert re.search(r"\((batch|4), 5\)", msg), msg  # the input's shape


def test_wrong_input_width_after_a_good_call(xp):
    """Checks are not skipped for a model that has already run."""
    model = _model(xp)
    ha.hessian(model, xp.asarray(X))
    with pytest.raises(ValueError, match="layer 0"):
        ha.hessian(model, xp.asarray(np.ones((BATCH, 2))))


def test_inconsistent_layers():
    with pytest.raises(ValueError) as info:
        ha.Sequential(ha.Dense(np.ones((4, 3))), ha.Tanh(), ha.Dense(np.ones((2, 5))))
    msg = str(info.value)
    assert "layer 2" in msg and "(2, 5)" in msg and re.search(r"\b4\b", msg), msg


def test_inconsistent_layers_inside_residual():
    with pytest.raises(ValueError, match="residual"):
        ha.Residual(ha.Dense(np.ones((4, 3))), ha.Tanh())  # maps width 3 to 4
    with pytest.raises(ValueError) as info:
        ha.Sequential(ha.Dense(np.ones((4, 3))), ha.Residual(ha.Dense(np.ones((3, 3)))))
    assert "layer 1" in str(info.value)


def test_loss_target_width_mismatch():
    with pytest.raises(ValueError, match="layer 2"):
        ha.Sequential(ha.Dense(np.ones((4, 3))), ha.Tanh(), ha.MSELoss(np.ones((5, 2))))
    with pytest.raises(ValueError, match="layer 1"):
        ha.Sequential(ha.Dense(np.ones((4, 3))), ha.SoftmaxCrossEntropy(np.eye(3)))


def test_loss_target_batch_mismatch(xp):
    model = _model(xp)  # LABELS has BATCH samples
    with pytest.raises(ValueError, match=f"{BATCH}.*{BATCH + 1}|{BATCH + 1}.*{BATCH}"):
        ha.hessian(model, xp.asarray(np.ones((BATCH + 1, D))))
    mse = build_hessarray([*SPEC, ("mse", np.ones((BATCH, M)))], xp.asarray)
    with pytest.raises(ValueError, match="MSELoss"):
        ha.hessian(mse, xp.asarray(np.ones((BATCH - 1, D))))


def test_x_of_wrong_rank(xp):
    model = _model(xp, SPEC)
    with pytest.raises(ValueError, match="shape"):
        ha.hessian(model, xp.asarray(np.ones((2, BATCH, D))))
    with pytest.raises(ValueError, match="shape"):
        ha.hessian(model, xp.asarray(np.array(1.0)))


def test_bad_layers_and_models():
    with pytest.raises(ValueError):
        ha.Sequential()
    with pytest.raises(TypeError, match="layer 1"):
        ha.Sequential(ha.Tanh(), "relu")
    with pytest.raises(ValueError, match="last"):
        ha.Sequential(ha.Sum(), ha.Tanh())
    with pytest.raises(ValueError, match="scalar"):
        ha.Residual(ha.Tanh(), ha.Sum())
    with pytest.raises(ValueError):
        ha.Residual()
    with pytest.raises(ValueError):
        ha.Dense(np.ones(3))
    with pytest.raises(ValueError, match=r"\(4,\) or \(4, 1\)"):
        ha.Dense(np.ones((4, 3)), np.ones(3))
    with pytest.raises(TypeError):
        ha.Dense(np.ones((4, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        ha.Softplus(0.0)
    with pytest.raises(TypeError):
        ha.Elementwise(np.sin, np.cos, "not callable")
    with pytest.raises(ValueError):
        ha.SoftmaxCrossEntropy(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError):
        ha.MSELoss(np.ones((2, 3, 4)))
    with pytest.raises(TypeError, match="Sequential"):
        ha.hessian(ha.Tanh(), np.ones((2, 3)))


def test_bad_mode_and_chunk_size(xp):
    model = _model(xp)
    x = xp.asarray(X)
    with pytest.raises(ValueError, match="mode"):
        ha.hessian(model, x, mode="sideways")
    with pytest.raises(ValueError, match="chunk_size"):
        ha.hessian(model, x, chunk_size=0)


# -- dtypes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
def test_non_floating_x(xp, dtype):
    model = _model(xp)
    x = xp.asarray(np.ones((BATCH, D), dtype=dtype))
    for fn in (ha.hessian, ha.jacobian, ha.gradient, ha.derivatives):
        with pytest.raises(TypeError, match="float"):
            fn(model, x)
    with pytest.raises(TypeError, match="float"):
        model(x)
    # also after the model has run on floating input of the same library
    ha.gradient(model, xp.asarray(X))
    with pytest.raises(TypeError, match="float"):
        ha.hessian(model, x)


def test_x_not_an_array():
    model = _model(make_backend("numpy"))
    with pytest.raises(TypeError):
        ha.hessian(model, X.tolist())


# -- libraries and devices ----------------------------------------------------------------------
def _other_backend(xp):
    """A backend whose arrays must not be mixed with ``xp``'s (a Dask ``x`` may go with a
    NumPy model, see hessarray/_dask.py: torch for both)."""
    return make_backend("torch" if xp.name in ("numpy", "dask") else "numpy")


def _assert_names_both(msg, a, b):
    for arr in (a, b):
        assert type(arr).__name__ in msg, f"{type(arr).__name__} not in: {msg}"


def test_model_and_x_from_different_libraries(xp):
    other = _other_backend(xp)
    model = _model(xp)
    x = other.asarray(X)
    with pytest.raises(TypeError) as info:
        ha.hessian(model, x)
    _assert_names_both(str(info.value), model[0].weight, x)
    # and the other way round: a model from the other library with this library's x
    model2 = _model(other)
    x2 = xp.asarray(X)
    with pytest.raises(TypeError) as info:
        ha.derivatives(model2, x2, wrt="0.weight")
    _assert_names_both(str(info.value), model2[0].weight, x2)


def test_different_libraries_after_a_good_call(xp):
    """A model that has already run on its own library's arrays still rejects others."""
    model = _model(xp)
    ha.hessian(model, xp.asarray(X))
    x = _other_backend(xp).asarray(X)
    with pytest.raises(TypeError) as info:
        ha.hessian(model, x)
    _assert_names_both(str(info.value), model[0].weight, x)


def test_mixed_libraries_inside_the_model(xp):
    other = _other_backend(xp)
    model = ha.Sequential(ha.Dense(xp.asarray(W1)), ha.Tanh(), ha.Dense(other.asarray(W2)))
    with pytest.raises(TypeError) as info:
        ha.hessian(model, xp.asarray(X))
    assert "2.weight" in str(info.value)


def test_labels_from_another_library(xp):
    other = _other_backend(xp)
    layers = [ha.Dense(xp.asarray(W1)), ha.Tanh(), ha.Dense(xp.asarray(W2))]
    model = ha.Sequential(*layers, ha.SoftmaxCrossEntropy(other.asarray(LABELS)))
    with pytest.raises(TypeError):
        ha.hessian(model, xp.asarray(X))


def test_strict_devices_do_not_mix():
    import array_api_strict

    default = make_backend("array_api_strict")
    device1 = make_backend("array_api_strict:device1")
    for model_on, x_on in [(default, device1), (device1, default)]:
        model = _model(model_on)
        x = x_on.asarray(X)
        for fn, args in ((ha.hessian, (model, x)), (ha.jacobian, (model, x)), (model, (x,))):
            with pytest.raises(TypeError) as info:
                fn(*args)
            msg = str(info.value)
            assert "CPU_DEVICE" in msg and "device1" in msg, msg
        # after a good call on the model's own device, too
        ha.hessian(model, model_on.asarray(X))
        with pytest.raises(TypeError, match="device"):
            ha.hessian(model, x)
    mixed = ha.Sequential(ha.Dense(default.asarray(W1)), ha.Dense(device1.asarray(W2)))
    with pytest.raises(TypeError, match="device"):
        ha.hessian(mixed, default.asarray(X))
    assert array_api_strict.Device("device1") == device1.device


@pytest.mark.parametrize("xp", ["torch:cuda", "jax:cuda", "cupy"], indirect=True)
def test_gpu_model_with_cpu_x(xp):
    """A model on the GPU with ``x`` on the CPU (same library where it has both) is refused."""
    cpu = make_backend({"torch:cuda": "torch", "jax:cuda": "jax", "cupy": "numpy"}[xp.name])
    model = _model(xp)
    x = cpu.asarray(X)
    with pytest.raises(TypeError) as info:
        ha.hessian(model, x)
    if xp.name != "cupy":
        assert "cuda" in str(info.value).lower() or "gpu" in str(info.value).lower()


# -- names and output kinds --------------------------------------------------------------------
def test_unknown_parameter_name(xp):
    model = _model(xp)
    x = xp.asarray(X)
    for wrt in ("1.weight", "0.weights", "weight", "5.weight", "0.bias.x"):
        for fn in (ha.hessian, ha.gradient, ha.jacobian, ha.derivatives):
            with pytest.raises(KeyError) as info:
                fn(model, x, wrt=wrt)
            msg = str(info.value)
            assert wrt in msg and "0.weight" in msg and "0.bias" in msg and "2.weight" in msg, msg


def test_gradient_of_vector_output(xp):
    model = _model(xp, SPEC)
    with pytest.raises(ValueError, match="jacobian"):
        ha.gradient(model, xp.asarray(X))
    # with respect to a parameter the output is summed: allowed
    g = xp.to_numpy(ha.gradient(model, xp.asarray(X), wrt="0.weight"))
    assert g.shape == W1.shape


# -- empty batches ------------------------------------------------------------------------------
@pytest.mark.parametrize("xp,case", backend_cases(["vector", "scalar"], ["scalar"]), indirect=["xp"])
def test_empty_batch(xp, case):
    scalar = case == "scalar"
    spec = [*SPEC, ("sum",)] if scalar else SPEC
    model = _model(xp, spec)
    x = xp.asarray(np.zeros((0, D)))
    o = () if scalar else (M,)
    res = {}
    for mode in MODES:
        res[mode] = {
            "d": ha.derivatives(model, x, mode=mode),
            "j": ha.jacobian(model, x, mode=mode),
            "p": ha.derivatives(model, x, wrt="0.weight", mode=mode),
            "ps": ha.derivatives(model, x, wrt="0.bias", per_sample=True, mode=mode),
            "chunked": ha.hessian(model, x, mode=mode, chunk_size=2 if xp.name not in SLOW else None),
            "y": model(x),
        }
    for r in materialize(xp, res).values():
        assert r["d"].value.shape == (0, *o)
        assert r["d"].jacobian.shape == (0, *o, D)
        assert r["d"].hessian.shape == (0, *o, D, D)
        assert r["j"].shape == (0, *o, D)
        assert r["chunked"].shape == (0, *o, D, D)
        assert r["y"].shape == (0, *o)
        # summed over no samples: zeros of the parameter's shape
        assert r["p"].value.shape == ()
        assert_close(r["p"].value, 0.0, 0, "empty sum")
        assert_close(r["p"].jacobian, np.zeros(W1.shape), 0, "empty gradient")
        assert_close(r["p"].hessian, np.zeros(W1.shape + W1.shape), 0, "empty hessian")
        assert r["ps"].jacobian.shape == (0, *o, N)
        assert r["ps"].hessian.shape == (0, *o, N, N)


# -- NaN and inf ----------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("xp,case", backend_cases(["nan", "inf", "-inf"], ["nan"]), indirect=["xp"])
def test_non_finite_sample_stays_in_its_row(xp, case):
    """A NaN/inf in one sample's input affects only that sample's results; nothing raises."""
    spec = [("dense", W1, B1), ("act", "softplus"), ("dense", W2, None), ("act", "sin"), ("ce", LABELS)]
    x_np = X.copy()
    bad = float(case)
    x_np[1, 2] = bad
    good = [0, 2, 3]
    ref = cached_torch_reference(spec, X, "2.weight")
    model = build_hessarray(spec, xp.asarray)
    x = xp.asarray(x_np)
    res = {}
    for mode in MODES:
        res[mode] = {
            "d": ha.derivatives(model, x, mode=mode, chunk_size=2 if xp.name not in SLOW else None),
            "ps": ha.derivatives(model, x, wrt="2.weight", per_sample=True, mode=mode),
            "summed": ha.derivatives(model, x, wrt="2.weight", mode=mode),
        }
    for mode, r in materialize(xp, res).items():
        d, ps = r["d"], r["ps"]
        for a, b, what in [
            (d.value, ref["value"], "value"),
            (d.jacobian, ref["jacobian"], "jacobian"),
            (d.hessian, ref["hessian"], "hessian"),
            (ps.jacobian, ref["p_jac"], "per-sample d/dW"),
            (ps.hessian, ref["p_hess_ps"], "per-sample d2/dW2"),
        ]:
            assert np.all(np.isfinite(a[good])), f"{what} ({mode}): other samples became non-finite"
            assert_close(a[good], b[good], 1e-10, f"{what} ({mode}) of the finite samples")
        if np.isnan(bad):
            assert np.isnan(d.value[1]) and np.all(np.isnan(d.hessian[1])), mode
            assert np.isnan(r["summed"].value), "the sum over the batch includes the NaN sample"
