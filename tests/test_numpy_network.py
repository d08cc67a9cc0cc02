"""The compiled NumPy executor against the portable one, on random architectures.

Every built-in activation, residual blocks (nested too), widths 1-64, inputs up to 64 wide,
the ends ``Sum`` and ``MSELoss`` or vector outputs, both dtypes; the value, Jacobian and
Hessian, its diagonal, its trace and Hessian-vector products.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import hessarray as ha
from hessarray import _numpy

network = pytest.importorskip("hessarray._numpy.network")
if not network.HAVE_BLAS:  # pragma: no cover
    pytest.skip("numba with SciPy's BLAS is not installed", allow_module_level=True)

ACTIVATIONS = {
    "tanh": ha.Tanh,
    "sigmoid": ha.Sigmoid,
    "softplus": lambda: ha.Softplus(1.5),
    "silu": ha.SiLU,
    "elu": lambda: ha.ELU(0.7),
    "leaky_relu": lambda: ha.LeakyReLU(0.1),
    "relu": ha.ReLU,
    "logcosh": ha.LogCosh,
    "sin": ha.Sin,
    "cos": ha.Cos,
    "exp": ha.Exp,
    "square": ha.Square,
    "power": lambda: ha.Power(3.0),
    "identity": ha.Identity,
}
#: Activations that keep values within a few units (the others at most once per model).
BOUNDED = ["tanh", "sigmoid", "softplus", "silu", "elu", "leaky_relu", "relu", "logcosh", "sin", "cos", "identity"]


def _dense(rng, n_in, n_out, bias):
    w = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    return ha.Dense(w, rng.standard_normal(n_out) * 0.5 if bias else None)


@st.composite
def networks(draw, max_d=8, max_width=16):
    """``(layers, x)``: a random lowered network in float64 and its input."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = draw(st.integers(1, max_d))
    batch = draw(st.integers(1, 70))
    grown = [False]

    def activation():
        names = BOUNDED + ([] if grown[0] else ["exp", "square", "power"])
        name = draw(st.sampled_from(names))
        grown[0] = grown[0] or name not in BOUNDED
        return ACTIVATIONS[name]()

    def chain(width, depth, nest, fixed):
        layers = []
        for _ in range(depth):
            kind = draw(st.sampled_from(["dense", "act", "act"] + (["residual"] if nest < 2 else [])))
            if kind == "dense":
                out = width if fixed else draw(st.integers(1, max_width))
                layers.append(_dense(rng, width, out, draw(st.booleans())))
                width = out
            elif kind == "act":
                layers.append(activation())
            else:
                inner, _ = chain(width, draw(st.integers(1, 3)), nest + 1, True)
                layers.append(ha.Residual(*inner, h=draw(st.sampled_from([1.0, 0.5, -0.3]))))
        return layers, width

    layers, m = chain(d, draw(st.integers(1, 5)), 0, False)
    end = draw(st.sampled_from(["none", "dense", "sum", "mse", "mse_shared"]))
    if end == "dense":
        layers.append(_dense(rng, m, draw(st.integers(1, 3)), True))
    elif end == "sum":
        layers.append(ha.Sum())
    elif end == "mse":
        layers.append(ha.MSELoss(rng.standard_normal((batch, m))))
    elif end == "mse_shared":
        layers.append(ha.MSELoss(rng.standard_normal(m)))
    return layers, rng.standard_normal((batch, d))


def _cast(layers, dtype):
    return ha.Sequential(*layers).map_arrays(lambda name, a: a.astype(dtype))


def _both(model, x, fn, portable):
    """``fn(model, x)`` by the compiled executor (checked by the plan) and by the portable one."""
    assert ha.plan(model, x, mode="forward").executor == "numpy-compiled"
    assert ha.plan(model, x, part="trace").executor == "numpy-compiled"
    fast = fn(model, x)
    with portable():
        slow = fn(model, x)
    return fast, slow


def _close(fast, slow, dtype):
    rtol, atol = (2e-4, 2e-4) if dtype == np.float32 else (1e-9, 1e-9)
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = max(1.0, float(np.max(np.abs(b), initial=0.0)))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol * scale)


def _derivatives(model, x):
    out = ha.derivatives(model, x, mode="forward")
    return out.value, out.jacobian, out.hessian


@given(networks(), st.sampled_from([np.float64, np.float32]))
def test_full_hessian_matches_portable(portable, net, dtype):
    layers, x = net
    model, x = _cast(layers, dtype), x.astype(dtype)
    _close(*_both(model, x, _derivatives, portable), dtype)


@given(networks(), st.sampled_from(["diag", "trace"]), st.sampled_from([np.float64, np.float32]))
def test_diagonal_and_trace_match_portable(portable, net, part, dtype):
    layers, x = net
    model, x = _cast(layers, dtype), x.astype(dtype)
    fn = (lambda mo, xx: (ha.hessian_diagonal(mo, xx),)) if part == "diag" else (lambda mo, xx: (ha.laplacian(mo, xx),))
    assert ha.plan(model, x, part=part).executor == "numpy-compiled"
    fast = fn(model, x)
    with portable():
        slow = fn(model, x)
    _close(fast, slow, dtype)


@given(networks(), st.integers(1, 3), st.sampled_from([np.float64, np.float32]))
def test_hessian_vector_products_match_portable(portable, net, vectors, dtype):
    layers, x = net
    model, x = _cast(layers, dtype), x.astype(dtype)
    v = np.random.default_rng(0).standard_normal((*x.shape, vectors)).astype(dtype)
    fn = lambda mo, xx: (ha.hvp(mo, xx, v), ha.hvp(mo, xx, v[..., 0]))  # noqa: E731
    fast = fn(model, x)
    with portable():
        slow = fn(model, x)
    _close(fast, slow, dtype)


@given(networks(max_d=64, max_width=64), st.sampled_from([np.float64, np.float32]))
def test_wide_inputs_and_layers(portable, net, dtype):
    layers, x = net
    model, x = _cast(layers, dtype), x.astype(dtype)
    _close(*_both(model, x, _derivatives, portable), dtype)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_activation_mlp_and_residual(portable, name, dtype):
    rng = np.random.default_rng(1)
    act = ACTIVATIONS[name]
    for layers in (
        [_dense(rng, 3, 8, True), act(), _dense(rng, 8, 8, True), act(), _dense(rng, 8, 1, True)],
        [
            _dense(rng, 3, 8, True),
            act(),
            ha.Residual(_dense(rng, 8, 8, True), act(), h=0.5),
            _dense(rng, 8, 2, False),
            ha.Sum(),
        ],
    ):
        model = _cast(layers, dtype)
        x = rng.standard_normal((37, 3)).astype(dtype)
        _close(*_both(model, x, _derivatives, portable), dtype)


@pytest.mark.parametrize("end", ["none", "dense", "sum", "mse"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kept_outputs_in_every_position(portable, end, dtype):
    """Activations whose derivatives come from their output keep it in a row of their own:
    one after another, beside activations that keep ``φ'`` and ``φ''``, before and inside
    residual blocks (whose sum is written in place), and last."""
    from hessarray._numpy.executor import lowered
    from hessarray._numpy.lowering import KEEP, OP, POINTWISE

    rng = np.random.default_rng(5)
    layers = [
        _dense(rng, 3, 6, True),
        ha.Tanh(),
        ha.Tanh(),
        ha.Sin(),
        ha.Tanh(),
        ha.Residual(_dense(rng, 6, 6, True), ha.Tanh(), h=0.5),
        ha.Residual(ha.ReLU(), _dense(rng, 6, 6, False), ha.Exp(), h=-0.3),
        ha.Identity(),
        ha.Residual(ha.Tanh(), h=1.0),
        ha.LeakyReLU(-0.2),
        ha.Tanh(),
    ]
    if end == "dense":
        layers.append(_dense(rng, 6, 2, True))
    elif end == "sum":
        layers.append(ha.Sum())
    elif end == "mse":
        layers.append(ha.MSELoss(rng.standard_normal(6)))
    x = rng.standard_normal((29, 3)).astype(dtype)
    model = _cast(layers, dtype)
    ops = lowered(model.layers, x).ops
    pointwise_ops = ops[ops[:, OP] == POINTWISE]
    assert (pointwise_ops[:, KEEP] >= 0).sum() == 9  # all but Sin and the negative slope
    _close(*_both(model, x, _derivatives, portable), dtype)
    v = rng.standard_normal((29, 3, 2)).astype(dtype)
    for fn in (ha.hessian_diagonal, ha.laplacian, lambda mo, xx: ha.hvp(mo, xx, v)):
        fast = fn(model, x)
        with portable():
            slow = fn(model, x)
        _close((fast,), (slow,), dtype)


def test_narrow_first_layer_maps_back(portable):
    """An input wider than the first layer: seeds in that layer's outputs, mapped back."""
    rng = np.random.default_rng(2)
    model = ha.Sequential(
        _dense(rng, 12, 4, True), ha.Softplus(), _dense(rng, 4, 4, True), ha.Sin(), _dense(rng, 4, 1, True)
    )
    x = rng.standard_normal((50, 12))
    _close(*_both(model, x, _derivatives, portable), np.float64)
    for fn in (ha.hessian_diagonal, ha.laplacian):
        fast = fn(model, x)
        with portable():
            slow = fn(model, x)
        np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_user_elementwise_runs_portable():
    rng = np.random.default_rng(3)
    cube = ha.Elementwise(lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z)
    model = ha.Sequential(_dense(rng, 2, 4, True), cube, _dense(rng, 4, 1, True))
    assert ha.plan(model, rng.standard_normal((5, 2))).executor == "portable"


def test_subclass_with_own_derivatives_runs_portable():
    class Shifted(ha.Tanh):
        def derivatives(self, xp, z):
            return super().derivatives(xp, z + 1.0)

    rng = np.random.default_rng(4)
    model = ha.Sequential(_dense(rng, 2, 4, True), Shifted(), _dense(rng, 4, 1, True))
    assert Shifted().lower() is None
    assert ha.plan(model, rng.standard_normal((5, 2))).executor == "portable"


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_threads_sharing_tiles_give_the_serial_result(workers):
    rng = np.random.default_rng(5)
    model = ha.Sequential(
        _dense(rng, 3, 16, True), ha.SiLU(), ha.Residual(_dense(rng, 16, 16, True), ha.Tanh()), _dense(rng, 16, 1, True)
    )
    from hessarray._numpy.executor import lowered

    x = rng.standard_normal((300, 3))
    prog = lowered(model.layers, x)
    serial = network.run(prog, x, "full", 1, 16)
    shared = network.run(prog, x, "full", workers, 16)
    for a, b in zip(serial, shared):
        np.testing.assert_array_equal(a, b)


def test_nan_and_inf_propagate(portable):
    rng = np.random.default_rng(6)
    model = ha.Sequential(_dense(rng, 2, 8, True), ha.Softplus(), _dense(rng, 8, 1, True))
    x = np.array([[np.nan, 0.0], [np.inf, 1.0], [0.5, -0.5]])
    fast, slow = _both(model, x, _derivatives, portable)
    for a, b in zip(fast, slow):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
        np.testing.assert_allclose(a[~np.isnan(a)], b[~np.isnan(b)], rtol=1e-12)


def test_switched_off_runs_portable(monkeypatch):
    monkeypatch.setattr(_numpy, "ENABLED", False)
    rng = np.random.default_rng(7)
    model = ha.Sequential(_dense(rng, 2, 4, True), ha.Tanh(), _dense(rng, 4, 1, True))
    assert ha.plan(model, rng.standard_normal((5, 2))).executor == "portable"


@pytest.mark.parametrize("weights", [np.float64, np.float32], ids=["own_arrays", "copied_arrays"])
@pytest.mark.parametrize("batch", [5, 300], ids=["transposed_views", "transposed_copies"])
def test_weights_written_in_place_are_seen(portable, weights, batch):
    """The compiled program holds the layers' own arrays, or copies made per call: a weight
    written in place between two calls is seen, as the portable executor sees it."""
    rng = np.random.default_rng(5)
    first, hidden = _dense(rng, 2, 16, True), _dense(rng, 16, 16, True)
    model = _cast([first, ha.Tanh(), hidden, ha.Softplus(), _dense(rng, 16, 1, True)], weights)
    x = rng.standard_normal((batch, 2))
    before = ha.derivatives(model, x)
    for layer in (model.layers[0], model.layers[2]):
        layer.weight[...] *= 1.5
        layer.bias[...] += 0.25
    fast, slow = _both(model, x, _derivatives, portable)
    _close(fast, slow, np.float64)
    assert not np.allclose(before.hessian, fast[2])
