"""``hessarray.testing.check_layer``: every built-in layer passes, broken layers are caught with
the part of the contract, the index of the worst entry and the error in the message."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from array_api_compat import array_namespace

import hessarray as ha
from hessarray.layers import Activation, Elementwise
from hessarray.layers.elementwise import Tanh
from hessarray.testing import LayerReport, check_layer

RNG = np.random.default_rng(7)
BATCH, WIDTH = 3, 4


def away_from_zero(shape, rng=None):
    """Random entries of either sign with ``0.3 <= |x| <= 1.5``: no kink of ReLU within reach of
    the finite differences, and positive powers stay real on ``|x|``."""
    rng = np.random.default_rng(0) if rng is None else rng
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.3, 1.5, size=shape)


def cube():
    return Elementwise(lambda z: z * z * z, lambda z: 3.0 * z * z, lambda z: 6.0 * z, name="cube")


ACTIVATIONS = [
    ha.Tanh(),
    ha.Sigmoid(),
    ha.Softplus(),
    ha.Softplus(beta=2.5),
    ha.ReLU(),
    ha.LeakyReLU(),
    ha.LeakyReLU(0.2),
    ha.ELU(),
    ha.ELU(alpha=0.7),
    ha.SiLU(),
    ha.LogCosh(),
    ha.Sin(),
    ha.Cos(),
    ha.Exp(),
    ha.Square(),
    ha.Power(3),
    ha.Power(1),
    ha.Identity(),
    cube(),
    Elementwise(
        lambda z: array_namespace(z).sin(z), lambda z: array_namespace(z).cos(z), lambda z: -array_namespace(z).sin(z)
    ),
    Elementwise(lambda z: z * z, lambda z: 2.0 * z, lambda z: 2.0),  # a constant second derivative
]


def built_in_layers():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, WIDTH))
    yield "Dense", ha.Dense(W)
    yield "Dense-bias", ha.Dense(W, rng.standard_normal(3))
    yield "Dense-column-bias", ha.Dense(W, rng.standard_normal((3, 1)))
    for layer in ACTIVATIONS:
        yield repr(layer), layer
    yield (
        "Residual",
        ha.Residual(ha.Dense(rng.standard_normal((WIDTH, WIDTH)), rng.standard_normal(WIDTH)), ha.Tanh(), h=0.5),
    )
    yield (
        "Residual-deep",
        ha.Residual(
            ha.Dense(rng.standard_normal((WIDTH, WIDTH))), ha.Sin(), ha.Dense(rng.standard_normal((WIDTH, WIDTH)))
        ),
    )
    yield "Sum", ha.Sum()
    yield "MSELoss", ha.MSELoss(rng.standard_normal((BATCH, WIDTH)))
    yield "MSELoss-shared-target", ha.MSELoss(rng.standard_normal(WIDTH))
    yield "SoftmaxCrossEntropy-labels", ha.SoftmaxCrossEntropy(np.array([0, 3, 1]))
    yield "SoftmaxCrossEntropy-rows", ha.SoftmaxCrossEntropy(rng.dirichlet(np.ones(WIDTH), size=BATCH))


LAYERS = list(built_in_layers())


@pytest.mark.parametrize("layer", [layer for _, layer in LAYERS], ids=[name for name, _ in LAYERS])
def test_built_in_layer_passes(layer):
    report = check_layer(layer, away_from_zero((BATCH, WIDTH)))
    assert isinstance(report, LayerReport)
    assert report.skipped == []
    assert all(0.0 <= ratio <= 1.0 for ratio in report.checked.values())
    assert "pull_hessian vs finite differences of pull" in report.checked
    assert any("array_api_strict float32 on 'device1'" in part for part in report.checked)
    if layer.parameters():
        assert any(part.startswith("param_hessian(") for part in report.checked)
        assert any(part.startswith("param_second(") for part in report.checked)


def test_report_lists_every_part():
    report = check_layer(ha.Dense(RNG.standard_normal((2, 3)), RNG.standard_normal(2)), RNG.standard_normal((2, 3)))
    text = str(report)
    for part in (
        "push (Jacobian) vs finite differences of forward",
        "param_gradient('bias') vs finite differences of forward",
        "param_hessian('weight', 'bias') vs finite differences of param_gradient",
        "push_params vs finite differences of forward",
        "curvature_apply_params vs finite differences of pull",
        "forward-mode vs reverse-mode Hessian in the chain [Dense, layer, Dense]",
        "Hessian-vector product (curvature_apply) vs reverse-mode Hessian in the chain [layer, Dense]",
    ):
        assert part in text


def test_one_sample_and_other_libraries():
    import array_api_strict as xps

    x = xps.asarray(away_from_zero((WIDTH,)), dtype=xps.float32, device=xps.Device("device1"))
    W = xps.asarray(RNG.standard_normal((2, WIDTH)), dtype=xps.float32, device=xps.Device("device1"))
    check_layer(ha.Dense(W, xps.zeros(2, device=xps.Device("device1"))), x)  # its arrays are copied too
    check_layer(ha.SiLU(), x)


def test_layer_is_not_modified():
    W = RNG.standard_normal((3, WIDTH))
    b = RNG.standard_normal(3)
    layer = ha.Dense(W, b)
    keep = W.copy(), b.copy()
    check_layer(layer, RNG.standard_normal((2, WIDTH)))
    assert layer.weight is W and layer.bias is b
    np.testing.assert_array_equal(W, keep[0])
    np.testing.assert_array_equal(b, keep[1])


class Locked(ha.Tanh):
    """A layer holding state that cannot be copied (a lock) and a callable."""

    def __init__(self):
        self.lock = threading.Lock()
        self.scale = lambda z: z

    def derivatives(self, xp, z):
        with self.lock:
            return super().derivatives(xp, self.scale(z))


def test_non_copyable_state():
    check_layer(Locked(), RNG.standard_normal((2, 3)))


# -- broken layers ----------------------------------------------------------------------------------


class WrongSecond(Activation):
    """tanh with φ'' off by 1%."""

    def derivatives(self, xp, z):
        f = xp.tanh(z)
        df = 1.0 - f * f
        return f, df, -2.02 * f * df


class WrongFirst(Activation):
    """tanh with φ' off by 1% (φ'' right)."""

    def derivatives(self, xp, z):
        f = xp.tanh(z)
        df = 1.0 - f * f
        return f, 1.01 * df, -2.0 * f * df


class NoCurvatureApply(Tanh):
    """tanh that forgot ``curvature_apply``."""

    def curvature_apply(self, cache, g, t):
        return None


class WrongBiasGradient(ha.Dense):
    """Dense whose bias gradient is doubled."""

    def param_gradient(self, cache, name, g, per_sample):
        out = super().param_gradient(cache, name, g, per_sample)
        return 2.0 * out if name == "bias" else out


class NoMixedCurvature(ha.Dense):
    """Dense without the mixed input-weight curvature of parameter-space products."""

    def curvature_apply_params(self, cache, g, t, v):
        return None


class NotOnStrict(Tanh):
    """tanh through NumPy: right values, wrong library."""

    def derivatives(self, xp, z):
        f = np.tanh(np.asarray(z))
        df = 1.0 - f * f
        return f, df, -2.0 * f * df


def failure(layer, x=None, **kwargs) -> str:
    x = away_from_zero((BATCH, WIDTH)) if x is None else x
    with pytest.raises(AssertionError) as info:
        check_layer(layer, x, **kwargs)
    return str(info.value)


def test_wrong_second_derivative_is_caught():
    message = failure(WrongSecond())
    assert "pull_hessian vs finite differences of pull" in message
    assert "worst entry at index (" in message and "error" in message
    assert "WrongSecond()" in message


def test_wrong_jacobian_is_caught():
    message = failure(WrongFirst())
    assert "push (Jacobian) vs finite differences of forward" in message
    assert "worst entry at index (" in message


def test_missing_curvature_apply_is_caught():
    message = failure(NoCurvatureApply())
    assert "curvature_apply vs pull_hessian" in message
    assert "None, taken as zero" in message
    assert "worst entry at index (" in message


def test_wrong_parameter_derivatives_are_caught():
    W, b = RNG.standard_normal((3, WIDTH)), RNG.standard_normal(3)
    assert "param_gradient('bias') vs finite differences of forward" in failure(WrongBiasGradient(W, b))
    assert "curvature_apply_params vs finite differences of pull" in failure(NoMixedCurvature(W, b))


def test_wrong_library_is_caught_and_can_be_skipped():
    message = failure(NotOnStrict())
    assert "array_api_strict" in message and "forward" in message
    report = check_layer(NotOnStrict(), away_from_zero((BATCH, WIDTH)), strict=False)
    assert report.skipped and "strict=False" in report.skipped[0]


def test_parameters_that_cannot_be_perturbed_are_reported():
    class Copies(ha.Dense):
        def parameters(self):
            return {name: a * 1.0 for name, a in super().parameters().items()}  # new arrays

    report = check_layer(Copies(RNG.standard_normal((2, WIDTH))), RNG.standard_normal((2, WIDTH)))
    assert len(report.skipped) == 1 and "'weight'" in report.skipped[0]
    assert not any("finite differences of param_gradient" in part for part in report.checked)


def test_exception_names_the_method():
    class Unfinished(ha.Layer):
        def forward(self, x):
            return x, None

        def push(self, cache, t, g=None):
            return t, []

        def pull(self, cache, g):
            return g

    message = failure(Unfinished())
    assert "pull_hessian" in message and "NotImplementedError" in message


def test_kink_needs_a_smooth_neighbourhood():
    x = np.array([[1e-7, -1e-7, 1.0]])
    assert "finite differences" in failure(ha.ReLU(), x)
