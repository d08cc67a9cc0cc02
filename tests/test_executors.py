"""The executor registry, and the plan tells the truth: the executor ``ha.plan`` names is the
one that runs (each registered executor's ``run`` spied on)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from reference import assert_close

import hessarray as ha
from hessarray.engine import executors

CALLS = {"full": ha.derivatives, "diag": ha.hessian_diagonal, "trace": ha.laplacian}


def tanh_mlp(dtype=np.float64, asarray=np.asarray, act=ha.Tanh, d=3, width=16):
    """``Dense-Tanh-Dense-Tanh-Dense-Sum`` (the compiled path's shape), weights by ``asarray``."""
    rng = np.random.default_rng(0)

    def dense(n_out, n_in):
        w = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
        return ha.Dense(asarray(w), asarray((0.3 * rng.standard_normal(n_out)).astype(dtype)))

    return ha.Sequential(dense(width, d), act(), dense(width, width), act(), dense(2, width), ha.Sum())


def custom_tanh():
    """tanh as a user's :class:`hessarray.Elementwise` (array-API calls only)."""

    def f(z):
        import array_api_compat

        return array_api_compat.array_namespace(z).tanh(z)

    return ha.Elementwise(f, lambda z: 1 - f(z) ** 2, lambda z: -2 * f(z) * (1 - f(z) ** 2), name="tanh")


@pytest.fixture
def ran(monkeypatch):
    """The names of the executors whose ``run`` was called, in order."""
    names = []
    for executor in executors.REGISTRY.values():

        def recording(*args, _executor=executor, _run=executor.run, **kwargs):
            names.append(_executor.name)
            return _run(*args, **kwargs)

        monkeypatch.setattr(executor, "run", recording)
    return names


def test_registry_lists_both_executors():
    assert list(executors.REGISTRY) == ["numpy-compiled", "portable"]
    for name, executor in executors.REGISTRY.items():
        assert executor.name == name
        assert callable(executor.applies) and callable(executor.memory) and callable(executor.run)
    assert executors.REGISTRY["portable"].tile is None and executors.REGISTRY["numpy-compiled"].tile > 0


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("part", list(CALLS))
def test_compiled_model_runs_the_compiled_executor(portable, ran, dtype, part):
    pytest.importorskip("numba")
    pytest.importorskip("scipy")
    model, x = tanh_mlp(dtype), np.random.default_rng(1).standard_normal((70, 3)).astype(dtype)
    planned = ha.plan(model, x, part=part)
    assert planned.executor == "numpy-compiled"
    assert planned.tile == executors.REGISTRY["numpy-compiled"].tile
    got = CALLS[part](model, x)
    assert ran == ["numpy-compiled"]
    ran.clear()
    with portable():
        assert ha.plan(model, x, part=part).executor == "portable"
        want = CALLS[part](model, x)
    assert ran == ["portable"]
    for g, w in zip(got if part == "full" else [got], want if part == "full" else [want]):
        assert_close(g, w, 1e-10 if dtype == np.float64 else 2e-4)


def test_jacobian_and_reverse_mode_run_portable(ran):
    model, x = tanh_mlp(), np.random.default_rng(2).standard_normal((20, 3))
    assert ha.plan(model, x, hessian=False).executor == "portable"
    ha.jacobian(model, x)
    assert ha.plan(model, x, mode="reverse").executor == "portable"
    ha.derivatives(model, x, mode="reverse")
    assert ran == ["portable", "portable"]


@pytest.mark.parametrize("part", list(CALLS))
def test_custom_elementwise_runs_portable(ran, part):
    model, x = tanh_mlp(act=custom_tanh), np.random.default_rng(3).standard_normal((30, 3))
    planned = ha.plan(model, x, part=part)
    assert planned.executor == "portable" and planned.tile is None
    CALLS[part](model, x)
    assert ran == ["portable"]


def _torch():
    torch = pytest.importorskip("torch")
    return torch.asarray


def _jax():
    jax = pytest.importorskip("jax")
    return jax.numpy.asarray


@pytest.mark.parametrize("library", [_torch, _jax], ids=["torch", "jax"])
def test_other_libraries_run_portable(ran, library):
    asarray = library()
    model = tanh_mlp(np.float32, asarray)
    x = asarray(np.random.default_rng(4).standard_normal((10, 3)).astype(np.float32))
    for part, call in CALLS.items():
        assert ha.plan(model, x, part=part).executor == "portable"
        call(model, x)
    assert ran == ["portable"] * len(CALLS)


def test_numba_switched_off_plans_portable():
    """``HESSARRAY_NUMBA=0`` (read at import) leaves only the portable executor."""
    code = (
        "import numpy as np, hessarray as ha\n"
        "rng = np.random.default_rng(0)\n"
        "m = ha.Sequential(ha.Dense(rng.standard_normal((8, 2))), ha.Tanh(), ha.Dense(rng.standard_normal((8, 8))),"
        " ha.Tanh(), ha.Dense(rng.standard_normal((1, 8))), ha.Sum())\n"
        "x = rng.standard_normal((5, 2))\n"
        "print(ha.plan(m, x).executor, ha.plan(m, x, part='trace').executor)\n"
    )
    env = dict(os.environ, HESSARRAY_NUMBA="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["portable", "portable"]


def test_plan_rejects_an_unknown_executor():
    model, x = tanh_mlp(), np.ones((2, 3))
    with pytest.raises(ValueError, match="executor"):
        ha.engine.make_plan(model.layers, 2, 3, x, np, executor="nope")
