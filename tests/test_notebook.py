"""The notebook the project started from: ``tf.hessians`` of a two-layer tanh network's
squared output with respect to ``W1``, reproduced on every backend in float64.

``tests/data/seed_example.npz`` holds the notebook's arrays and its float64 reference
derivatives (a copy of ``shared/reference/seed_example.npz``; the inputs can be regenerated
from ``np.random.seed(0)``, see :func:`regenerate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from backends import materialize, same_kind
from reference import assert_rel

import hessarray as ha
from hessarray.__main__ import notebook_arrays

DATA = Path(__file__).parent / "data" / "seed_example.npz"
MODES = ("forward", "reverse", "auto")
#: max |error| / max |reference| allowed against the notebook's float64 numbers
RTOL = 1e-12


@pytest.fixture(scope="module")
def npz() -> dict[str, np.ndarray]:
    with np.load(DATA) as f:
        return dict(f)


def regenerate() -> dict[str, np.ndarray]:
    """The notebook's inputs: ``np.random.seed(0)`` then ``np.random.rand`` in this order (as
    the demo rebuilds them)."""
    return notebook_arrays()


def notebook_model(arrays, asarray) -> ha.Sequential:
    """``c = sum(tanh(W2 @ tanh(W1 @ x.T + b1) + b2).T ** 2)``."""
    return ha.Sequential(
        ha.Dense(asarray(arrays["W1"]), asarray(arrays["b1"])),
        ha.Tanh(),
        ha.Dense(asarray(arrays["W2"]), asarray(arrays["b2"])),
        ha.Tanh(),
        ha.Square(),
        ha.Sum(),
    )


def test_inputs_regenerate_from_seed(npz):
    for name, value in regenerate().items():
        assert npz[name].shape == value.shape
        np.testing.assert_array_equal(npz[name], value, err_msg=name)


def test_global_seed_stream_is_the_same():
    """``np.random.seed(0); np.random.rand(...)`` as in the notebook gives the same arrays."""
    # the notebook's own legacy calls; the global state is restored afterwards
    state = np.random.get_state()  # noqa: NPY002
    try:
        np.random.seed(0)  # noqa: NPY002
        drawn = [np.random.rand(*s) for s in [(4, 3), (4, 1), (1, 4), (1, 1), (1, 3)]]  # noqa: NPY002
    finally:
        np.random.set_state(state)  # noqa: NPY002
    for a, b in zip(drawn, regenerate().values(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", MODES)
def test_notebook_example(xp, npz, mode):
    model = notebook_model(npz, xp.asarray)
    x = xp.asarray(npz["x"])
    assert x.dtype == xp.xp.float64
    p = ha.derivatives(model, x, wrt="0.weight", mode=mode)
    grad_w1 = ha.gradient(model, x, wrt="0.weight", mode=mode)
    hess_w1 = ha.hessian(model, x, wrt="0.weight", mode=mode)
    d = ha.derivatives(model, x, mode=mode)
    grad_x = ha.gradient(model, x, mode=mode)
    hess_x = ha.hessian(model, x, mode=mode)
    value = model(x)
    results = {
        "p.value": p.value,
        "p.jacobian": p.jacobian,
        "p.hessian": p.hessian,
        "grad_w1": grad_w1,
        "hess_w1": hess_w1,
        "d.value": d.value,
        "d.jacobian": d.jacobian,
        "d.hessian": d.hessian,
        "grad_x": grad_x,
        "hess_x": hess_x,
        "model(x)": value,
    }
    for name, r in results.items():
        assert same_kind(r, x), name
        assert r.dtype == x.dtype, name
        assert xp.device_of(r) == xp.device, f"{name} is on {xp.device_of(r)}, not {xp.device}"
    r = materialize(xp, results)

    assert r["p.hessian"].shape == (4, 3, 4, 3)
    assert r["p.jacobian"].shape == (4, 3)
    assert r["p.value"].shape == ()
    assert r["hess_x"].shape == (1, 3, 3)
    assert r["grad_x"].shape == (1, 3)
    assert r["model(x)"].shape == (1,)

    for name in ("p.hessian", "hess_w1"):
        assert_rel(r[name], npz["hessian_W1"], RTOL, name)
    for name in ("p.jacobian", "grad_w1"):
        assert_rel(r[name], npz["grad_W1"], RTOL, name)
    for name in ("p.value", "model(x)", "d.value"):
        assert_rel(np.reshape(r[name], ()), npz["value"], RTOL, name)
    # TensorFlow's tf.hessians(c, x) has shape x.shape + x.shape = (1, 3, 1, 3); ours (1, 3, 3)
    hx = npz["hessian_x"][:, :, 0, :]
    np.testing.assert_array_equal(npz["hessian_x"].reshape(1, 3, 3), hx)
    for name in ("d.hessian", "hess_x"):
        assert_rel(r[name], hx, RTOL, name)
    for name in ("d.jacobian", "grad_x"):
        assert_rel(r[name], npz["grad_x"], RTOL, name)


def test_notebook_example_one_dimensional_x(npz):
    """``x`` of shape ``(3,)`` gives the same numbers without the batch axis."""
    model = notebook_model(npz, np.asarray)
    d = ha.derivatives(model, npz["x"][0])
    assert d.value.shape == () and d.jacobian.shape == (3,) and d.hessian.shape == (3, 3)
    assert_rel(d.hessian, npz["hessian_x"][0, :, 0, :], RTOL, "hessian")
    assert_rel(d.jacobian, npz["grad_x"][0], RTOL, "gradient")
    assert_rel(d.value, npz["value"], RTOL, "value")
    assert_rel(ha.hessian(model, npz["x"][0], wrt="0.weight"), npz["hessian_W1"], RTOL, "hessian W1")
