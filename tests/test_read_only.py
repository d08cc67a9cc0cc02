"""Nothing writes into the user's arrays: read-only NumPy inputs, weights, targets and vectors.

Every public function runs on arrays marked read-only (``a.flags.writeable = False``), so that
any write into one raises, on models that NumPy's compiled executor runs (a tanh MLP, a residual
tanh network as in hessQuik) and models the portable one runs (a Softplus MLP, an ``MSELoss``
with a read-only target), whole and in chunks forced by ``max_memory``; afterwards every array
still holds its values and is still read-only.
"""

from __future__ import annotations

import numpy as np
import pytest

import hessarray as ha
from hessarray.engine import executors

RNG = np.random.default_rng(2024)
BATCH, D = 200, 3
#: Small enough that every function runs the batch in several chunks.
CHUNKED = 384 << 10


def frozen(a) -> np.ndarray:
    a = np.array(a)
    a.flags.writeable = False
    return a


def dense(rows: int, cols: int, bias: bool = True) -> ha.Dense:
    w = frozen(RNG.standard_normal((rows, cols)) / cols**0.5)
    return ha.Dense(w, frozen(RNG.standard_normal(rows)) if bias else None)


def tanh_mlp() -> ha.Sequential:
    return ha.Sequential(dense(16, D), ha.Tanh(), dense(16, 16), ha.Tanh(), dense(1, 16), ha.Sum())


def tanh_resnet() -> ha.Sequential:
    blocks = [ha.Residual(dense(8, 8), ha.Tanh(), h=0.5) for _ in range(2)]
    return ha.Sequential(dense(8, D), ha.Tanh(), *blocks, dense(1, 8, bias=False), ha.Sum())


def softplus_mlp() -> ha.Sequential:
    return ha.Sequential(dense(16, D), ha.Softplus(), dense(16, 16), ha.Softplus(), dense(1, 16), ha.Sum())


def mse_loss() -> ha.Sequential:
    target = frozen(RNG.standard_normal((BATCH, 2)))
    return ha.Sequential(dense(16, D), ha.Tanh(), dense(2, 16), ha.MSELoss(target))


MODELS = {"tanh-mlp": tanh_mlp, "tanh-resnet": tanh_resnet, "softplus-mlp": softplus_mlp, "mse-loss": mse_loss}


def user_arrays(model: ha.Sequential) -> list[np.ndarray]:
    return [a for _, a in model.arrays()]


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
@pytest.mark.parametrize("name", list(MODELS))
def test_nothing_writes_into_user_arrays(name, chunked):
    model = MODELS[name]()
    x = frozen(RNG.standard_normal((BATCH, D)))
    v = frozen(RNG.standard_normal((BATCH, D)))
    vk = frozen(RNG.standard_normal((BATCH, D, 2)))
    mine = [x, v, vk, *user_arrays(model)]
    assert all(not a.flags.writeable for a in mine)
    saved = [a.copy() for a in mine]
    budget = {"max_memory": CHUNKED} if chunked else {}
    compiled = ha.plan(model, x).executor == "numpy-compiled"
    if compiled:
        assert ha.plan(model, x, **budget).executor == "numpy-compiled"
        assert ha.plan(model, x, part="trace", **budget).executor == "numpy-compiled"
    if chunked and compiled:  # its full Hessian is all output: calls of a tile for the diagonal
        per_thread, per_sample = executors.REGISTRY["numpy-compiled"].memory(
            model.layers, D, "diag", "forward", None, 8
        )
        tight = {"max_memory": per_thread + 64 * per_sample}
        for part, fn in (("diag", ha.hessian_diagonal), ("trace", ha.laplacian)):
            planned = ha.plan(model, x, part=part, **tight)
            assert planned.executor == "numpy-compiled" and planned.chunk_size < BATCH
            fn(model, x, **tight)
    elif chunked:
        assert ha.plan(model, x, **budget).chunk_size < BATCH
        assert ha.plan(model, x, part="trace", **budget).chunk_size < BATCH
    wrt = next(iter(model.parameters()))
    p = sum(a.size for a in model.parameters().values())
    flat = frozen(RNG.standard_normal(p))
    matrix = frozen(RNG.standard_normal((p, 2)))
    named = {wrt: frozen(RNG.standard_normal(model.parameters()[wrt].shape))}
    mine += [flat, matrix, *named.values()]
    saved += [a.copy() for a in (flat, matrix, *named.values())]

    def call(fn, *args, **kw):
        """``fn(*args, **kw)``; chunked: under the smallest budget (from :data:`CHUNKED` up,
        doubling) that holds one sample of what ``fn`` forms."""
        if not chunked:
            return fn(*args, **kw)
        limit = CHUNKED
        while True:
            try:
                return fn(*args, max_memory=limit, **kw)
            except MemoryError:
                limit *= 2
                assert limit < 1 << 30

    call(ha.derivatives, model, x)
    call(ha.derivatives, model, x, wrt=wrt)
    call(ha.derivatives, model, x, wrt=wrt, per_sample=True)
    call(ha.hessian, model, x)
    call(ha.jacobian, model, x)
    call(ha.gradient, model, x)
    call(ha.gradient, model, x, wrt=wrt)
    call(ha.hessian_diagonal, model, x)
    call(ha.laplacian, model, x)
    call(ha.hvp, model, x, v)
    call(ha.hvp, model, x, vk)
    call(ha.plan, model, x)
    call(ha.parameter_hessian, model, x)
    call(ha.parameter_hessian, model, x, blocks="full", flat=True)
    call(ha.gauss_newton, model, x)
    call(ha.parameter_hvp, model, x, flat)
    call(ha.parameter_hvp, model, x, named, curvature="gauss_newton")
    operator = call(ha.parameter_operator, model, x)
    operator @ flat
    operator @ matrix
    operator.matvec(named)
    moved = model.to(np)
    model(x)
    moved(x)

    mine += user_arrays(moved)
    saved += [a.copy() for a in user_arrays(moved)]
    for a, before in zip(mine, saved):
        assert not a.flags.writeable
        np.testing.assert_array_equal(a, before)


def test_read_only_gives_the_writeable_results():
    """The compiled executor copies nothing it need not, and read-only arrays change no result."""
    model = tanh_mlp()
    x = frozen(RNG.standard_normal((BATCH, D)))
    writeable = model.map_arrays(lambda _, a: np.array(a))
    for fn in (ha.hessian, ha.laplacian, ha.hessian_diagonal):
        np.testing.assert_array_equal(fn(model, x), fn(writeable, np.array(x)))
