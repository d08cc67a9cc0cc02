"""On GPUs the portable executor runs the whole batch (or blocks sized by the memory budget)
on the caller's thread: no CPU thread pool, no cache-sized blocks.

No GPU is needed for most of this: torch's ``meta`` device stands in for one. Its tensors have
shapes, dtypes and a device but no data, so a call runs every array operation without
computing anything, and ``is_eager_cpu`` is false for them exactly as for CUDA tensors. The
same checks then run on the real GPU backends (``cupy``, ``torch:cuda``, ``jax:cuda``), which
skip cleanly without a GPU (``asv_bench/gpu_check.sh`` runs them on one).
"""

from __future__ import annotations

import numpy as np
import pytest
from backends import make_backend, materialize
from reference import assert_close

import hessarray as ha
from hessarray._backend import array_namespace, is_eager_cpu
from hessarray.engine import batching

torch = pytest.importorskip("torch")

BATCH = 100_000  # many cache-sized blocks on a CPU; one block on a device
#: The default budget on a GPU is half its free memory (``hessarray.engine.budget``); the meta
#: device reports none, so the tests pass one of that size (half of a free 80 GB card).
GPU_BUDGET = 40 << 30


def mlp(asarray, d: int = 2, width: int = 32) -> ha.Sequential:
    rng = np.random.default_rng(0)
    return ha.Sequential(
        ha.Dense(asarray(rng.standard_normal((width, d)) / np.sqrt(d)), asarray(0.1 * rng.standard_normal(width))),
        ha.Tanh(),
        ha.Dense(asarray(rng.standard_normal((width, width)) / np.sqrt(width))),
        ha.Tanh(),
        ha.Dense(asarray(rng.standard_normal((1, width)) / np.sqrt(width))),
        ha.Sum(),
    )


@pytest.fixture
def no_pool(monkeypatch):
    """Any use of hessarray's thread pool fails the test."""

    def refuse(workers):
        raise AssertionError(f"the CPU thread pool was asked for {workers} workers")

    monkeypatch.setattr(batching, "_executor", refuse)


def meta(a: np.ndarray):
    return torch.empty(a.shape, dtype=torch.float64, device="meta")


def test_meta_device_is_not_an_eager_cpu():
    x = torch.empty((3, 2), dtype=torch.float64, device="meta")
    assert not is_eager_cpu(array_namespace(x), x)
    xc = torch.zeros((3, 2), dtype=torch.float64)
    assert is_eager_cpu(array_namespace(xc), xc)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_device_plan_is_one_block_on_one_thread(mode):
    model = mlp(meta)
    x = torch.empty((BATCH, 2), dtype=torch.float64, device="meta")
    plan = ha.plan(model, x, mode=mode, max_memory=GPU_BUDGET)
    assert plan.mode == mode
    assert plan.chunk_size == BATCH
    assert plan.workers == 1
    # The same model and batch on the CPU: cache-sized blocks (what the device plan avoids).
    cpu_x = torch.zeros((BATCH, 2), dtype=torch.float64)
    cpu_plan = ha.plan(mlp(torch.asarray), cpu_x, mode=mode, max_memory=GPU_BUDGET)
    assert cpu_plan.chunk_size < BATCH


def test_device_calls_run_without_the_pool(no_pool):
    model = mlp(meta)
    x = torch.empty((BATCH, 2), dtype=torch.float64, device="meta")
    for mode in ("forward", "reverse"):
        value, grad, hess = ha.derivatives(model, x, mode=mode, max_memory=GPU_BUDGET)
        assert hess.shape == (BATCH, 2, 2) and hess.device.type == "meta"
    assert ha.laplacian(model, x, max_memory=GPU_BUDGET).shape == (BATCH,)
    assert ha.jacobian(model, x, max_memory=GPU_BUDGET).shape == (BATCH, 2)
    assert ha.derivatives(model, x).hessian.shape == (BATCH, 2, 2)  # the default budget: blocks


def test_budget_sized_blocks_stay_on_the_callers_thread(no_pool):
    """With a memory budget too small for the batch, the blocks run one after another on the
    caller's thread (GPUs queue their work: threads would only add launch contention)."""
    model = mlp(meta)
    x = torch.empty((BATCH, 2), dtype=torch.float64, device="meta")
    whole = ha.plan(model, x, max_memory=GPU_BUDGET)
    assert whole.chunk_size == BATCH
    budget = whole.working_set // 8
    plan = ha.plan(model, x, max_memory=budget)
    assert plan.workers == 1
    assert 1 <= plan.chunk_size < BATCH
    hess = ha.hessian(model, x, max_memory=budget)
    assert hess.shape == (BATCH, 2, 2)


@pytest.mark.parametrize("name", ["cupy", "torch:cuda", "jax:cuda"])
def test_gpu_backend_runs_one_block_without_the_pool(name, no_pool):
    """On a real GPU (skipped without one): one block, no pool, the NumPy result."""
    be = make_backend(name)
    batch = 5000
    x = np.random.default_rng(1).uniform(-1, 1, (batch, 2))
    model = mlp(be.asarray)
    xd = be.asarray(x)
    plan = ha.plan(model, xd)
    assert plan.workers == 1
    assert plan.chunk_size == batch  # far within the default budget of a GPU's free memory
    value, grad, hess = materialize(be, tuple(ha.derivatives(model, xd)))
    want = ha.derivatives(mlp(np.asarray), x)
    assert_close(value, want.value, 1e-12)
    assert_close(grad, want.jacobian, 1e-12)
    assert_close(hess, want.hessian, 1e-12)
