"""Memory budget (``max_memory=``) and progress bars (``progress=``) of the public functions."""

from __future__ import annotations

import sys
import tracemalloc

import array_api_compat
import numpy as np
import pytest
from backends import materialize

import hessarray as ha
from hessarray import tuning
from hessarray.engine import batching, budget, executors

RNG = np.random.default_rng(7)


def softplus_model(d: int = 3, width: int = 8, asarray=np.asarray) -> ha.Sequential:
    """A small model the portable passes run on every backend (a user's softplus: no compiled
    path)."""
    w0, w1 = RNG.standard_normal((width, d)), RNG.standard_normal((1, width))
    return ha.Sequential(
        ha.Dense(asarray(w0), asarray(RNG.standard_normal(width))), USER_SOFTPLUS, ha.Dense(asarray(w1)), ha.Sum()
    )


def _sigmoid(z):
    return 0.5 * array_api_compat.array_namespace(z).tanh(0.5 * z) + 0.5


def _softplus(z):
    xp = array_api_compat.array_namespace(z)
    return xp.where(z > 0, z, xp.zeros_like(z)) + xp.log1p(xp.exp(-xp.abs(z)))


USER_SOFTPLUS = ha.Elementwise(_softplus, _sigmoid, lambda z: _sigmoid(z) * (1.0 - _sigmoid(z)), name="softplus")


def tanh_mlp(d: int = 8, width: int = 64) -> ha.Sequential:
    """A tanh MLP: NumPy's compiled whole-network path runs it."""
    return ha.Sequential(
        ha.Dense(RNG.standard_normal((width, d)) / d**0.5, RNG.standard_normal(width)),
        ha.Tanh(),
        ha.Dense(RNG.standard_normal((width, width)) / width**0.5),
        ha.Tanh(),
        ha.Dense(RNG.standard_normal((1, width))),
        ha.Sum(),
    )


def same(got, want, tol: float = 1e-12) -> None:
    if isinstance(want, dict):
        assert got.keys() == want.keys()
        for key in want:
            same(got[key], want[key], tol)
        return
    if isinstance(want, tuple):
        for g, w in zip(got, want):
            same(g, w, tol)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# -- identical results, chunked and not ------------------------------------------------------------
SMALL = 64 << 10  # 64 KiB: blocks of a few samples for the small model


@pytest.mark.parametrize("name", ["derivatives", "laplacian", "hvp"])
def test_chunked_equals_unchunked_on_every_backend(xp, name):
    model = softplus_model(asarray=xp.asarray)
    x = xp.asarray(RNG.standard_normal((40, 3)))
    assert ha.plan(model, x, max_memory=SMALL).chunk_size < 40, "the budget chunks the batch"
    if name == "hvp":
        v = xp.asarray(RNG.standard_normal((40, 3, 2)))
        got, want = ha.hvp(model, x, v, max_memory=SMALL), ha.hvp(model, x, v)
    else:
        fn = getattr(ha, name)
        got, want = fn(model, x, max_memory=SMALL), fn(model, x)
    same(materialize(xp, got), materialize(xp, want))


def test_every_function_chunked_equals_unchunked(monkeypatch):
    model = softplus_model(d=4, width=6)
    x = RNG.standard_normal((200, 4))
    v = RNG.standard_normal((200, 4))
    budget_ = 160 << 10
    blocks = []
    original = ha.Dense.batch_slice
    monkeypatch.setattr(ha.Dense, "batch_slice", lambda self, a, b: blocks.append(b - a) or original(self, a, b))
    calls = {
        "derivatives": lambda **kw: ha.derivatives(model, x, **kw),
        "reverse": lambda **kw: ha.derivatives(model, x, mode="reverse", **kw),
        "hessian": lambda **kw: ha.hessian(model, x, **kw),
        "jacobian": lambda **kw: ha.jacobian(model, x, **kw),
        "gradient": lambda **kw: ha.gradient(model, x, **kw),
        "hessian_diagonal": lambda **kw: ha.hessian_diagonal(model, x, **kw),
        "laplacian": lambda **kw: ha.laplacian(model, x, **kw),
        "hvp": lambda **kw: ha.hvp(model, x, v, **kw),
        "wrt": lambda **kw: ha.derivatives(model, x, wrt="0.weight", **kw),
        "wrt per sample": lambda **kw: ha.hessian(model, x, wrt="2.weight", per_sample=True, **kw),
        "parameter_hessian": lambda **kw: ha.parameter_hessian(model, x, **kw),
        "parameter_hessian full": lambda **kw: ha.parameter_hessian(model, x, blocks="full", flat=True, **kw),
        "per-sample blocks": lambda **kw: ha.parameter_hessian(model, x, per_sample=True, **kw),
        "parameter_hvp": lambda **kw: ha.parameter_hvp(model, x, RNG.standard_normal(36), **kw),
        "parameter_operator": lambda **kw: ha.parameter_operator(model, x, **kw) @ np.eye(36)[:, :3],
    }
    for name, call in calls.items():
        seed = RNG.bit_generator.state
        want = call(chunk_size=200)
        RNG.bit_generator.state = seed  # the same random directions
        blocks.clear()
        same(call(max_memory=budget_), want)
        assert len(blocks) > 1, f"{name} ran in chunks"
    loss = ha.Sequential(*model.layers[:-1], ha.MSELoss(RNG.standard_normal((200, 1))))
    same(ha.gauss_newton(loss, x, max_memory=budget_), ha.gauss_newton(loss, x, chunk_size=200))


def test_compiled_path_chunked_equals_unchunked():
    model, x = tanh_mlp(), RNG.standard_normal((3000, 8))
    small = 3 << 20
    assert (
        ha.plan(model, x).executor == "numpy-compiled"
        and ha.plan(model, x, max_memory=small).executor == "numpy-compiled"
    )
    for fn in (ha.laplacian, ha.hessian_diagonal, ha.derivatives):
        same(fn(model, x, max_memory=small), fn(model, x))


def test_jit_plans_from_shapes():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    model = softplus_model(asarray=jnp.asarray)
    x = jnp.asarray(RNG.standard_normal((40, 3)))
    got = jax.jit(lambda z: ha.laplacian(model, z, max_memory=SMALL))(x)
    same(got, ha.laplacian(model, x))


# -- the plan is the truth -------------------------------------------------------------------------
def spy(monkeypatch, module, name):
    """Record the ``plan`` (4th argument) of each call of ``module.name``."""
    plans = []
    original = getattr(module, name)

    def recording(fn, layers, x, plan, *args, **kwargs):
        plans.append((plan, x.shape[0]))
        return original(fn, layers, x, plan, *args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    return plans


@pytest.mark.parametrize("max_memory", [None, 1 << 20, 64 << 10])
def test_plan_reports_the_chunk_that_runs(monkeypatch, max_memory):
    model, x = softplus_model(d=5, width=16), RNG.standard_normal((3000, 5))
    plans = spy(monkeypatch, executors, "map_blocks")
    ha.hessian(model, x, max_memory=max_memory)
    planned = ha.plan(model, x, max_memory=max_memory)
    assert [p.chunk_size for p, _ in plans] == [planned.chunk_size]
    assert planned.working_set <= planned.max_memory
    if max_memory is not None:
        assert planned.max_memory == max_memory


def test_plan_reports_the_compiled_chunk(monkeypatch):
    from hessarray._numpy import executor as compiled

    model, x = tanh_mlp(), RNG.standard_normal((20000, 8))
    sizes = []
    original = compiled.network.run

    def recording(prog, xb, *args):
        sizes.append(xb.shape[0])
        return original(prog, xb, *args)

    monkeypatch.setattr(compiled.network, "run", recording)
    ha.hessian(model, x, max_memory=4 << 20)
    assert sizes == [20000], "the full Hessian is written into the output: no chunks"
    planned = ha.plan(model, x, max_memory=4 << 20)
    assert planned.executor == "numpy-compiled" and planned.chunk_size == 20000
    sizes.clear()
    ha.laplacian(model, x, max_memory=4 << 20)
    part = ha.plan(model, x, max_memory=4 << 20, part="trace")
    assert part.executor == "numpy-compiled" and 1 < len(sizes) and set(sizes[:-1]) == {part.chunk_size}


@pytest.mark.parametrize("part", ["full", "trace"])
def test_compiled_plan_fits_its_threads_to_the_budget(monkeypatch, part):
    """Each thread of the compiled path holds its own tile buffers: on many cores the budget
    runs fewer threads rather than exceeding it or raising MemoryError."""
    monkeypatch.setenv("HESSARRAY_THREADS", "16")
    model, x = tanh_mlp(), RNG.standard_normal((600, 8))
    planned = ha.plan(model, x, max_memory=4 << 20, part=part)
    assert (
        planned.executor == "numpy-compiled" and 1 <= planned.workers < 16 and planned.working_set <= planned.max_memory
    )
    call = ha.hessian if part == "full" else ha.laplacian
    same(call(model, x, max_memory=4 << 20), call(model, x))


def test_compiled_path_gives_way_below_its_tile_buffers():
    """A budget below one thread's tile buffers runs the portable passes within it."""
    model, x = tanh_mlp(), RNG.standard_normal((50, 8))
    for part, call in (("full", ha.hessian), ("trace", ha.laplacian)):
        planned = ha.plan(model, x, max_memory=400 << 10, part=part)
        assert planned.executor == "portable" and planned.working_set <= planned.max_memory
        same(call(model, x, max_memory=400 << 10), call(model, x), 1e-10)


def test_plan_has_no_side_effects(monkeypatch):
    from hessarray._numpy import allocator as _allocator

    monkeypatch.setattr(_allocator, "_done", False)
    monkeypatch.setattr(_allocator, "_apply", lambda: pytest.fail("the plan set the allocator"))
    model = softplus_model()
    ha.plan(model, np.ones((7, 3)), max_memory=1 << 20, chunk_size=3)


# -- too small a budget ------------------------------------------------------------------------------
@pytest.mark.parametrize("call", ["hessian", "laplacian", "wrt", "parameter_hessian", "parameter_operator"])
def test_budget_below_one_sample_raises_before_any_work(monkeypatch, call):
    model, x = softplus_model(d=4, width=8), RNG.standard_normal((20, 4))
    run = {
        "hessian": lambda m: ha.hessian(model, x, max_memory=m),
        "laplacian": lambda m: ha.laplacian(model, x, max_memory=m),
        "wrt": lambda m: ha.hessian(model, x, wrt="0.weight", max_memory=m),
        "parameter_hessian": lambda m: ha.parameter_hessian(model, x, max_memory=m),
        "parameter_operator": lambda m: ha.parameter_operator(model, x, max_memory=m),
    }[call]
    with pytest.raises(MemoryError, match=r"at least (\d+) bytes") as info:
        run(100)
    need = int(info.value.args[0].split("at least ")[1].split(" bytes")[0])
    assert need > 100
    calls = []
    monkeypatch.setattr(batching, "before_run", lambda *args: calls.append(args))
    with pytest.raises(MemoryError):
        run(need - 1)
    assert not calls, "no block ran"
    run(need)  # the minimum is enough


def test_plan_raises_like_the_call():
    with pytest.raises(MemoryError, match="at least"):
        ha.plan(softplus_model(), np.ones((5, 3)), max_memory=10)
    with pytest.raises(ValueError, match="positive"):
        ha.plan(softplus_model(), np.ones((5, 3)), max_memory=0)
    with pytest.raises(TypeError, match="int"):
        ha.plan(softplus_model(), np.ones((5, 3)), max_memory=1.5)


# -- tracemalloc: the budget holds ------------------------------------------------------------------
BUDGET = 4 << 20


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "portable"])
@pytest.mark.parametrize("name", ["laplacian", "hessian", "derivatives"])
def test_peak_within_budget_plus_outputs(portable, name, compiled):
    model, x = tanh_mlp(d=8, width=64), RNG.standard_normal((20000, 8))
    fn = getattr(ha, name)
    with portable() if not compiled else _nothing():
        fn(model, x[:200], max_memory=BUDGET)  # caches filled, compiled once
        tracemalloc.start()
        try:
            out = fn(model, x, max_memory=BUDGET)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    outputs = sum(a.nbytes for a in (out if isinstance(out, tuple) else (out,)))
    assert peak <= BUDGET + outputs, (peak - outputs) / 2**20


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


# -- progress ----------------------------------------------------------------------------------------
def test_progress_bar_over_chunks(capsys):
    pytest.importorskip("tqdm")
    model, x = softplus_model(), RNG.standard_normal((200, 3))
    ha.laplacian(model, x, max_memory=SMALL, progress=True)
    err = capsys.readouterr().err
    blocks = -(-200 // ha.plan(model, x, max_memory=SMALL, part="trace").chunk_size)
    assert "hessarray" in err and f"{blocks}/{blocks}" in err
    ha.laplacian(model, x[:2], progress=True)  # one block: no bar
    assert capsys.readouterr().err == ""


def test_progress_bar_with_threads(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setenv("HESSARRAY_THREADS", "2")
    model, x = softplus_model(), RNG.standard_normal((300, 3))
    plan = ha.plan(model, x, chunk_size=10)
    ha.hessian(model, x, chunk_size=10, progress=True)
    assert plan.workers == 2 and "30/30" in capsys.readouterr().err


def test_progress_bar_advanced_on_the_calling_thread(monkeypatch):
    """tqdm's update is not thread-safe: blocks on the pool's threads are counted by the caller."""
    import threading
    from contextlib import contextmanager

    pytest.importorskip("tqdm")
    monkeypatch.setenv("HESSARRAY_THREADS", "2")
    threads = []

    class Bar:
        def update(self, n):
            threads.append((threading.get_ident(), n))

    monkeypatch.setattr(budget, "_bar", contextmanager(lambda tqdm, blocks: (yield Bar())))
    model, x = softplus_model(), RNG.standard_normal((300, 3))
    ha.hessian(model, x, chunk_size=10, progress=True)
    assert threads == [(threading.get_ident(), 1)] * 30


def test_progress_without_tqdm_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    model, x = softplus_model(), np.ones((5, 3))
    for call in (
        lambda: ha.hessian(model, x, progress=True),
        lambda: ha.laplacian(model, x, progress=True),
        lambda: ha.parameter_hessian(model, x, progress=True),
    ):
        with pytest.raises(ImportError, match=r"pip install tqdm.*hessarray\[progress\]"):
            call()
    ha.hessian(model, x)  # no bar asked: no tqdm needed


# -- the default budget ------------------------------------------------------------------------------
def test_default_budget_on_a_fake_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    model = softplus_model(d=6, width=32, asarray=lambda a: torch.asarray(a))
    x = torch.asarray(RNG.standard_normal((5000, 6)))
    assert ha.plan(model, x).max_memory == tuning.CPU_BYTES and ha.plan(model, x).chunk_size <= 5000
    free = 8 << 20
    monkeypatch.setattr(budget, "device_free_memory", lambda xp, a: free)
    plan = ha.plan(model, x)
    assert plan.max_memory == int(free * tuning.DEVICE_SHARE)
    assert plan.working_set <= plan.max_memory and plan.chunk_size < 5000
    explicit = ha.plan(model, x, max_memory=int(free * tuning.DEVICE_SHARE))
    assert explicit.chunk_size == plan.chunk_size, "the default is DEVICE_SHARE of the free memory"
    same(ha.hessian(model, x).numpy(), ha.hessian(model, x, chunk_size=5000).numpy())


def test_default_budgets():
    assert budget.default_budget(np, np.ones(3)) == tuning.CPU_BYTES
    da = pytest.importorskip("dask.array")
    xp = ha._backend.array_namespace(da.ones(3))
    assert budget.default_budget(xp, da.ones(3)) is None
