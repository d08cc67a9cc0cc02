"""Dask input runs one task per batch chunk, each calling the in-memory engine on its chunk
(hessarray/_dask.py): on a two-worker local cluster (processes, loopback only) and on Dask's
local schedulers, with a model of NumPy arrays and a model of Dask arrays."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

import hessarray as ha

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
HighLevelGraph = pytest.importorskip("dask.highlevelgraph").HighLevelGraph

BATCH, D, CHUNK = 23, 3, 8  # three batch chunks: 8, 8, 7
rng = np.random.default_rng(7)
W1, B1, W2 = rng.standard_normal((6, D)), rng.standard_normal(6), rng.standard_normal((2, 6))
T = rng.standard_normal((BATCH, 2))
X = rng.standard_normal((BATCH, D))
V = rng.standard_normal((BATCH, D, 2))
TOL = 1e-12


def scalar_model() -> ha.Sequential:
    return ha.Sequential(ha.Dense(W1, B1), ha.Tanh(), ha.Dense(W2), ha.Softplus(), ha.Sum())


def loss_model() -> ha.Sequential:
    """Per-sample targets: each task gets its chunk's rows of them."""
    return ha.Sequential(ha.Dense(W1, B1), ha.Tanh(), ha.Dense(W2), ha.MSELoss(T))


def lazy(model: ha.Sequential) -> ha.Sequential:
    """The same model with Dask arrays (chunked, so that they must be rechunked to one)."""
    return model.map_arrays(lambda name, a: da.from_array(a, chunks=4))


def as_model(kind: str, model: ha.Sequential) -> ha.Sequential:
    return model if kind == "numpy" else lazy(model)


def xd(chunks=(CHUNK, D)):
    return da.from_array(X, chunks=chunks)


def per_sample_calls(model, x, v):
    return {
        "derivatives": ha.derivatives(model, x),
        "hessian": ha.hessian(model, x),
        "jacobian": ha.jacobian(model, x),
        "gradient": ha.gradient(model, x),
        "hessian_diagonal": ha.hessian_diagonal(model, x),
        "laplacian": ha.laplacian(model, x),
        "hvp": ha.hvp(model, x, v),
        "hvp one": ha.hvp(model, x, v[..., 0]),
        "derivatives wrt": ha.derivatives(model, x, wrt="0.weight", per_sample=True),
        "hessian wrt": ha.hessian(model, x, wrt="2.weight", per_sample=True, mode="reverse"),
        "jacobian wrt": ha.jacobian(model, x, wrt="0.bias"),
        "gradient wrt": ha.gradient(model, x, wrt="0.bias", per_sample=True),
    }


def summed_calls(model, x, flat_v, dict_v):
    return {
        "derivatives wrt": ha.derivatives(model, x, wrt="0.weight"),
        "hessian wrt": ha.hessian(model, x, wrt="2.weight"),
        "parameter_hessian": ha.parameter_hessian(model, x),
        "parameter_hessian full": ha.parameter_hessian(model, x, blocks="full", flat=True),
        "gauss_newton": ha.gauss_newton(model, x),
        "parameter_hvp": ha.parameter_hvp(model, x, flat_v),
        "parameter_hvp dict": ha.parameter_hvp(model, x, dict_v, curvature="gauss_newton"),
        "operator": ha.parameter_operator(model, x) @ flat_v,
        "per-sample blocks": ha.parameter_hessian(model, x, per_sample=True),
    }


def leaves(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for key in tree for leaf in leaves(tree[key])]
    if isinstance(tree, tuple | list):
        return [leaf for item in tree for leaf in leaves(item)]
    return [tree]


def assert_matches(got: dict, want: dict, *, batch_chunks=None) -> None:
    """Every leaf is a lazy Dask array (with ``batch_chunks`` in front, if given) whose
    computed value equals the in-memory one."""
    for key in want:
        lazy_leaves, want_leaves = leaves(got[key]), leaves(want[key])
        assert len(lazy_leaves) == len(want_leaves), key
        for a in lazy_leaves:
            assert isinstance(a, da.Array), (key, type(a))
            assert isinstance(a._meta, np.ndarray), key
            if batch_chunks is not None:
                assert a.chunks[0] == batch_chunks, (key, a.chunks)
    (computed,) = dask.compute(got)
    for key in want:
        for a, b in zip(leaves(computed[key]), leaves(want[key])):
            assert a.shape == b.shape and a.dtype == b.dtype, key
            scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
            np.testing.assert_allclose(a, b, rtol=0, atol=TOL * scale, err_msg=key)


# -- the local schedulers (no cluster) -------------------------------------------------------------
def test_laplacian_threaded_scheduler():
    model = scalar_model()
    got = ha.laplacian(model, xd())
    assert isinstance(got, da.Array) and got.chunks == ((8, 8, 7),)
    np.testing.assert_allclose(got.compute(scheduler="threads"), ha.laplacian(model, X), rtol=0, atol=TOL)


def test_one_task_per_chunk_and_the_model_once():
    """The derivative step is one task per chunk; the weights are in the graph once, not in
    every task."""
    for model in (scalar_model(), lazy(scalar_model())):
        out = ha.derivatives(model, xd())
        graph = dict(HighLevelGraph.merge(*(a.__dask_graph__() for a in out)))
        steps = [k for k in graph if isinstance(k, tuple) and k[0].startswith("hessarray-derivatives-")]
        steps = [k for k in steps if "-part-" not in k[0]]
        assert len(steps) == 3, steps
        if model[0].weight is W1:  # NumPy weights: their bytes are in exactly one task
            holding = [k for k, task in graph.items() if W1.tobytes() in pickle.dumps(task)]
            assert len(holding) == 1, holding
        for k in steps:
            assert len(pickle.dumps(graph[k])) < 2000  # keys and options only


def test_one_dimensional_x_and_sync_scheduler():
    model = scalar_model()
    x1 = da.from_array(X[0], chunks=D)
    got = ha.hessian(model, x1)
    assert got.shape == (D, D)
    np.testing.assert_allclose(got.compute(scheduler="sync"), ha.hessian(model, X[0]), rtol=0, atol=TOL)


def test_feature_chunks_are_merged_with_a_warning():
    model = scalar_model()
    with pytest.warns(UserWarning, match="feature axis"):
        got = ha.hessian(model, xd(chunks=(CHUNK, 2)))
    assert got.chunks[0] == (8, 8, 7)
    np.testing.assert_allclose(got.compute(scheduler="threads"), ha.hessian(model, X), rtol=0, atol=TOL)


def test_unknown_chunk_sizes():
    """A boolean mask leaves the batch chunks unknown: fine where nothing is matched to the rows,
    a clear error (naming compute_chunk_sizes) where per-sample targets or v must be."""
    mask = np.arange(BATCH) % 3 != 0
    keep = da.from_array(mask, chunks=CHUNK)
    x = xd()[keep]
    assert np.isnan(x.shape[0])
    got = ha.laplacian(scalar_model(), x)
    np.testing.assert_allclose(got.compute(scheduler="sync"), ha.laplacian(scalar_model(), X[mask]), rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*3\.target.*compute_chunk_sizes"):
        ha.hessian(loss_model(), x)
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*\bv\b.*compute_chunk_sizes"):
        ha.hvp(scalar_model(), x, da.from_array(V, chunks=(CHUNK, D, 2))[keep])


def test_blas_limit_held_while_any_task_runs(monkeypatch):
    """Tasks on several threads share one process-wide BLAS limit: the first to enter takes it,
    the last to leave gives it back (not the first to leave)."""
    import threading

    threadpoolctl = pytest.importorskip("threadpoolctl")
    from hessarray import _dask

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    if not before or max(before) == 1:
        pytest.skip("BLAS runs one thread already")
    monkeypatch.setattr(_dask, "SERIAL_TASKS", True)
    inside, first_left, seen = threading.Barrier(2), threading.Event(), []

    def task(leaves_first: bool):
        with _dask.task_threads():
            inside.wait(timeout=30)
            if leaves_first:
                return first_left.set()
            first_left.wait(timeout=30)
            seen.append(blas_threads())

    threads = [threading.Thread(target=task, args=(first,)) for first in (True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [[1] * len(before)] and blas_threads() == before


def test_no_warning_for_one_feature_chunk():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ha.laplacian(scalar_model(), xd())


def test_bad_input_is_refused_at_once():
    torch = pytest.importorskip("torch")
    model = scalar_model()
    torch_model = model.map_arrays(lambda name, a: torch.asarray(a))
    with pytest.raises(TypeError, match="different array libraries"):
        ha.hessian(torch_model, xd())
    mixed = ha.Sequential(ha.Dense(da.from_array(W1), B1), ha.Tanh(), ha.Dense(W2), ha.Sum())
    with pytest.raises(TypeError, match="mixes array libraries"):
        ha.hessian(mixed, xd())
    with pytest.raises(TypeError, match="Dask array"):
        ha.hvp(model, xd(), V)  # v must be chunked like x
    with pytest.raises(ValueError, match="v must have shape"):
        ha.hvp(model, xd(), da.from_array(V[:5]))
    with pytest.raises(ValueError, match="width"):
        ha.hessian(model, da.from_array(X[:, :2]))
    with pytest.raises(ValueError, match="target has"):
        ha.gauss_newton(loss_model(), da.from_array(X[:5]))
    with pytest.raises(TypeError, match="float"):
        ha.hessian(model, da.from_array(np.ones((4, D), dtype=np.int64)))
    with pytest.raises(KeyError):
        ha.hessian(model, xd(), wrt="9.weight")


# -- a two-worker cluster ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_per_sample_functions_on_a_cluster(client, kind):
    model = scalar_model()
    got = per_sample_calls(as_model(kind, model), xd(), da.from_array(V, chunks=(CHUNK, D, 2)))
    assert_matches(got, per_sample_calls(model, X, V), batch_chunks=(8, 8, 7))


@pytest.mark.parametrize("kind", ["numpy", "dask"])
def test_summed_functions_on_a_cluster(client, kind):
    model = loss_model()
    sizes = {name: p.size for name, p in model.parameters().items()}
    flat_v = rng.standard_normal(sum(sizes.values()))
    dict_v = {"0.weight": rng.standard_normal(W1.shape), "2.weight": rng.standard_normal(W2.shape)}
    lazy_flat = flat_v if kind == "numpy" else da.from_array(flat_v, chunks=10)
    got = summed_calls(as_model(kind, model), xd(), lazy_flat, dict_v)
    want = summed_calls(model, X, flat_v, dict_v)
    assert isinstance(got["parameter_hessian"], dict)
    blocks = {"b": got.pop("per-sample blocks")}, {"b": want.pop("per-sample blocks")}
    assert_matches(got, want)
    assert_matches(*blocks, batch_chunks=(8, 8, 7))


def test_summed_result_is_a_tree_reduction(client):
    """Partial sums, one per chunk, added a few at a time: with many chunks the sum has
    several levels."""
    model = scalar_model()
    x = da.from_array(X, chunks=(1, D))  # 23 chunks
    got = ha.hessian(model, x, wrt="0.weight")
    names = [name for name in got.__dask_graph__().layers if "sum" in name]
    assert len(names) >= 2, names
    np.testing.assert_allclose(got.compute(), ha.hessian(model, X, wrt="0.weight"), rtol=0, atol=1e-11)


def test_feature_chunks_on_a_cluster(client):
    model = lazy(scalar_model())
    with pytest.warns(UserWarning, match="feature axis"):
        got = ha.laplacian(model, da.from_array(X, chunks=(CHUNK, 1)))
    np.testing.assert_allclose(got.compute(), ha.laplacian(scalar_model(), X), rtol=0, atol=TOL)


def test_operator_is_a_parameter_operator():
    model, x = scalar_model(), np.random.default_rng(3).standard_normal((12, 3))
    op = ha.parameter_operator(model, da.from_array(x, chunks=4), curvature="gauss_newton")
    assert isinstance(op, ha.ParameterOperator)
    assert op.shape == ha.parameter_operator(model, x).shape
    assert repr(op).endswith(", dask)")


def test_progress_is_not_passed_to_the_tasks(capsys):
    model, x = scalar_model(), np.random.default_rng(4).standard_normal((12, 3))
    budget = 1 << 13  # one sample per block: an in-memory call on a chunk draws a bar
    ha.laplacian(model, x[:4], progress=True, max_memory=budget)
    assert "hessarray" in capsys.readouterr().err
    lap = ha.laplacian(model, da.from_array(x, chunks=4), progress=True, max_memory=budget)
    np.testing.assert_allclose(lap.compute(scheduler="sync"), ha.laplacian(model, x), rtol=0, atol=1e-12)
    assert "hessarray" not in capsys.readouterr().err  # no bar per task


def test_mixed_library_message_points_to_to():
    import torch

    model = ha.Sequential(ha.Dense(torch.ones((2, 3), dtype=torch.float64)), ha.Sum())
    with pytest.raises(TypeError, match=r"model\.to\(numpy\)"):
        ha.laplacian(model, da.ones((4, 3), chunks=2))
