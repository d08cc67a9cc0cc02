"""Moving models between array libraries and devices: ``Sequential.to`` and ``Sequential.map_arrays``.

A NumPy model moved onto every backend computes the derivatives the NumPy model computes, holds
arrays of that backend (library, device, dtype), and comes back to NumPy exactly. The errors of
bad targets and of mixed libraries or devices say what to do.
"""

from __future__ import annotations

import importlib

import array_api_compat
import numpy as np
import pytest
from backends import SLOW, backend_cases, leaves, make_backend, materialize, same_kind

import hessarray as ha

RNG = np.random.default_rng(14)
B, D, N, M = 5, 3, 4, 3
W1, B1 = RNG.standard_normal((N, D)), RNG.standard_normal(N)
W2, B2 = RNG.standard_normal((N, N)), RNG.standard_normal((N, 1))
W3 = RNG.standard_normal((M, N))
TARGET = RNG.standard_normal((B, M))
LABELS = np.array([0, 2, 1, 1, 0])
X = RNG.standard_normal((B, D))

#: The module users import for each backend (the ``xp`` fixture's ``xp`` is its namespace).
MODULES = {
    "numpy": "numpy",
    "torch": "torch",
    "jax": "jax.numpy",
    "dask": "dask.array",
    "array_api_strict": "array_api_strict",
    "cupy": "cupy",
}


def module_of(backend):
    return importlib.import_module(MODULES[backend.name.split(":")[0]])


def numpy_model(loss: str) -> ha.Sequential:
    """Dense, activations, a residual block and a loss holding a target (float or integer)."""
    end = ha.MSELoss(TARGET) if loss == "mse" else ha.SoftmaxCrossEntropy(LABELS)
    block = ha.Residual(ha.Dense(W2, B2), ha.Tanh(), h=0.5)
    return ha.Sequential(ha.Dense(W1, B1), ha.Softplus(2.0), block, ha.Dense(W3), end)


def assert_on_backend(model, backend, source):
    """``model``'s arrays belong to ``backend`` (namespace, device) with ``source``'s names and dtypes."""
    like = backend.asarray(np.zeros(1))
    assert [n for n, _ in model.arrays()] == [n for n, _ in source.arrays()]
    for (name, a), (_, a0) in zip(model.arrays(), source.arrays()):
        assert type(a) is type(like), name
        assert array_api_compat.array_namespace(a) is array_api_compat.array_namespace(like), name
        assert backend.device_of(a) == backend.device_of(like) == backend.device, name
        assert str(a.dtype).rsplit(".", 1)[-1] == a0.dtype.name, name
        if backend.lazy:
            assert a.numblocks == (1,) * a.ndim, name  # one chunk


# -- derivatives on every backend -------------------------------------------------------------------
@pytest.mark.parametrize("xp,loss", backend_cases(["mse", "labels"], ["labels"]), indirect=["xp"])
def test_moved_model_gives_the_same_derivatives(xp, loss):
    model = numpy_model(loss)
    moved = model.to(module_of(xp), device=xp.device)
    assert_on_backend(moved, xp, model)
    x = xp.asarray(X)
    got = ha.derivatives(moved, x)
    for leaf in leaves(got):
        assert same_kind(leaf, x) and xp.device_of(leaf) == xp.device
        assert str(leaf.dtype).rsplit(".", 1)[-1] == "float64"
    want = ha.derivatives(model, X)
    for g, w in zip(materialize(xp, got), want):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_namespace_and_round_trip(xp):
    """``xp`` given as the array-API namespace works as the module does; back to NumPy is exact."""
    model = numpy_model("labels")
    moved = model.to(xp.xp, device=xp.device)
    assert_on_backend(moved, xp, model)
    back = moved.to(np)
    for (name, a), (_, a0) in zip(back.arrays(), model.arrays()):
        assert type(a) is np.ndarray and a.dtype == a0.dtype, name
        np.testing.assert_array_equal(a, a0)
    assert back.to(np, device="cpu")[0].weight is back[0].weight  # nothing to move


def test_float32_is_kept(xp):
    model32 = numpy_model("mse").map_arrays(lambda name, a: a.astype(np.float32))
    moved = model32.to(module_of(xp), device=xp.device)
    assert_on_backend(moved, xp, model32)
    x = xp.asarray(X.astype(np.float32))
    # The model's value only where each new shape compiles (JAX) or builds a graph (Dask).
    fn = (lambda model, x: model(x)) if xp.name in SLOW else ha.hessian
    (got,) = materialize(xp, (fn(moved, x),))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, fn(model32, X.astype(np.float32)), rtol=2e-4, atol=2e-5)


def test_default_device_is_the_librarys():
    import array_api_strict as strict

    model = numpy_model("mse").to(strict, device=strict.Device("device1"))
    assert model[0].weight.device == strict.Device("device1")
    assert model.to(strict)[0].weight.device == strict.Device("CPU_DEVICE")  # device=None: the default


def test_dask_stays_lazy():
    import dask.array as da

    dask = make_backend("dask")
    layers = [ha.Dense(dask.asarray(W1), dask.asarray(B1)), ha.Tanh(), ha.Dense(dask.asarray(W3))]
    model = ha.Sequential(*layers, ha.MSELoss(dask.asarray(TARGET)))
    again = model.to(da)
    for (name, a), (_, a0) in zip(again.arrays(), model.arrays()):
        assert a is a0, name  # Dask to Dask: the graphs as they are, nothing computed
    host = model.to(np)  # Dask to NumPy computes
    for (name, a), (_, a0) in zip(host.arrays(), model.arrays()):
        assert type(a) is np.ndarray, name
        np.testing.assert_array_equal(a, a0.compute())


def test_following_the_mixed_library_hint_works():
    import torch

    model = numpy_model("mse")
    x = torch.asarray(X)
    with pytest.raises(TypeError) as info:
        ha.hessian(model, x)
    msg = str(info.value)
    assert "numpy.ndarray" in msg and "torch.Tensor" in msg and "model.to(torch, device=x.device)" in msg, msg
    H = ha.hessian(model.to(torch, device=x.device), x)
    np.testing.assert_allclose(H.numpy(), ha.hessian(model, X), rtol=1e-12)


def test_mixed_device_message_points_to_to():
    import array_api_strict as strict

    model = numpy_model("labels").to(strict)
    x = strict.asarray(X, device=strict.Device("device1"))
    with pytest.raises(TypeError, match="different devices") as info:
        ha.hessian(model, x)
    msg = str(info.value)
    assert "CPU_DEVICE" in msg and "device1" in msg and "model.to(array_api_strict, device=x.device)" in msg, msg
    assert ha.hessian(model.to(strict, device=x.device), x).device == x.device


# -- map_arrays ------------------------------------------------------------------------------------------
def test_map_arrays_names_and_keeps_the_original():
    model = numpy_model("labels")
    before = [(name, a.copy()) for name, a in model.arrays()]
    seen = []

    def double(name, a):
        seen.append(name)
        return a * 2 if a.dtype.kind == "f" else a

    mapped = model.map_arrays(double)
    assert (
        seen
        == [name for name, _ in model.arrays()]
        == ["0.weight", "0.bias", "2.0.weight", "2.0.bias", "3.weight", "4.target"]
    )
    assert [name for name, _ in mapped.arrays()] == seen
    assert list(mapped.parameters()) == list(model.parameters())
    for (_, a), (_, a0) in zip(model.arrays(), before):  # the original is untouched
        np.testing.assert_array_equal(a, a0)
    for (_, a), (_, a0) in zip(mapped.arrays(), before):
        np.testing.assert_array_equal(a, a0 * 2 if a0.dtype.kind == "f" else a0)
    assert mapped is not model and mapped[1] is model[1]  # layers without arrays are shared
    assert mapped[2] is not model[2] and mapped[2].h == 0.5 and mapped[2].layers[1] is model[2].layers[1]
    assert mapped[2].layers[0].bias.shape == (N, 1)  # the user's bias shape is kept
    np.testing.assert_allclose(ha.gradient(mapped, X), ha.gradient(numpy_model("labels").map_arrays(double), X))


def test_map_arrays_checks_what_it_builds():
    model = numpy_model("mse")
    with pytest.raises(ValueError, match="Dense: b must have shape"):
        model.map_arrays(lambda name, a: a[:2] if name == "0.bias" else a)
    with pytest.raises(ValueError, match="layer 3"):
        model.map_arrays(lambda name, a: a[:, :2] if name == "3.weight" else a)
    with pytest.raises(ValueError, match="layer 4"):
        model.map_arrays(lambda name, a: a[:, :2] if name == "4.target" else a)


def test_map_arrays_needs_the_layer_contract():
    class Scaled(ha.Layer):
        has_curvature = False

        def __init__(self, s):
            self.s = s

        def parameters(self):
            return {"s": self.s}

    model = ha.Sequential(ha.Dense(W1), Scaled(np.ones(N)))
    with pytest.raises(NotImplementedError, match="Scaled.*map_arrays"):
        model.map_arrays(lambda name, a: a)
    assert ha.Sequential(ha.Dense(W1), ha.Tanh()).map_arrays(lambda name, a: a)[1] is not None


# -- bad targets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["torch", None.__class__, np.linalg, 3])
def test_unknown_library(bad):
    with pytest.raises(TypeError, match="numpy.*cupy.*jax.numpy.*torch.*array_api_strict.*dask.array"):
        numpy_model("mse").to(bad)


def test_bogus_device(xp):
    model = numpy_model("mse")
    with pytest.raises(ValueError, match="not a device of"):
        model.to(module_of(xp), device="no-such-device")


def test_invalid_devices_are_listed():
    import array_api_strict as strict
    import dask.array as da
    import torch

    model = numpy_model("mse")
    with pytest.raises(ValueError, match=r"'device1'.*Device\('device1'\)"):
        model.to(strict, device="device1")  # a string, not a Device
    with pytest.raises(ValueError, match="'cpu'"):
        model.to(np, device="gpu")
    with pytest.raises(ValueError, match="DASK_DEVICE"):
        model.to(da, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"cuda:0.*device\(type='cpu'\)"):
            model.to(torch, device="cuda:0")
    assert model.to(torch, device=torch.device("cpu"))[0].weight.device == torch.device("cpu")
