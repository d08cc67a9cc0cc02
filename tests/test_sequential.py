"""``Sequential`` as a container and a callable; 1-D inputs, chunking, plans, per-sample sums."""

from __future__ import annotations

import numpy as np
import pytest
from backends import SLOW, backend_cases, materialize
from reference import assert_close, build_hessarray, cached_torch_reference

import hessarray as ha
from hessarray.engine.plan import pick_mode
from hessarray.tuning import REVERSE_ADVANTAGE

_rng = np.random.default_rng(3)
D, N, M, BATCH = 3, 5, 2, 4
X = _rng.standard_normal((BATCH, D))
W1, B1 = _rng.standard_normal((N, D)) / 2, _rng.standard_normal(N)
W2 = _rng.standard_normal((M, N)) / 2
WR = _rng.standard_normal((N, N)) / 2
LABELS = _rng.integers(0, M, size=BATCH)
TARGET = _rng.standard_normal((BATCH, M))

VECTOR = [
    ("dense", W1, B1),
    ("act", "tanh"),
    ("residual", 0.5, [("dense", WR, None), ("act", "sin")]),
    ("dense", W2, None),
]
MODELS = {
    "vector": VECTOR,
    "sum": [*VECTOR, ("sum",)],
    "mse": [*VECTOR, ("mse", TARGET)],  # per-sample targets: sliced with the batch
    "ce_int": [*VECTOR, ("ce", LABELS)],
    "ce_onehot": [*VECTOR, ("ce", np.eye(M)[LABELS])],
}


def test_container_protocol():
    layers = [ha.Dense(W1, B1), ha.Tanh(), ha.Residual(ha.Dense(WR), ha.Sin(), h=0.5), ha.Dense(W2), ha.Sum()]
    model = ha.Sequential(*layers)
    assert len(model) == 5
    assert list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[-1] and model[2] is layers[2]
    head = model[:2]
    assert isinstance(head, ha.Sequential) and list(head) == layers[:2]
    tail = model[3:]
    assert isinstance(tail, ha.Sequential) and list(tail) == layers[3:]
    assert list(model[::2]) == layers[::2]
    # a list of layers is accepted as well
    assert list(ha.Sequential(layers)) == layers
    assert model.scalar_output and not head.scalar_output
    assert "Dense" in repr(model) and "Residual" in repr(model)
    with pytest.raises(IndexError):
        model[5]


def test_parameters_names_order_and_identity():
    layers = [ha.Dense(W1, B1), ha.Tanh(), ha.Residual(ha.Dense(WR), ha.Sin(), ha.Dense(WR, B1), h=0.5), ha.Dense(W2)]
    params = ha.Sequential(*layers).parameters()
    assert list(params) == ["0.weight", "0.bias", "2.0.weight", "2.2.weight", "2.2.bias", "3.weight"]
    assert params["0.weight"] is W1 and params["0.bias"] is B1 and params["3.weight"] is W2
    assert params["2.2.bias"] is B1
    # sliced models renumber their layers
    assert list(ha.Sequential(*layers)[2:].parameters()) == ["0.0.weight", "0.2.weight", "0.2.bias", "1.weight"]
    assert ha.Sequential(ha.Tanh(), ha.Sum()).parameters() == {}


@pytest.mark.parametrize("name", list(MODELS))
def test_call_matches_value(xp, name):
    spec = MODELS[name]
    model = build_hessarray(spec, xp.asarray)
    ref = cached_torch_reference(spec, X, None)
    y = model(xp.asarray(X))
    assert xp.device_of(y) == xp.device
    y = xp.to_numpy(y)
    assert y.shape == ((BATCH,) if name != "vector" else (BATCH, M))
    assert_close(y, ref["value"], 1e-12, "model(x)")


@pytest.mark.parametrize("xp,name", backend_cases(["vector", "sum", "mse"], ["sum"]), indirect=["xp"])
def test_one_dimensional_x(xp, name):
    """``x`` of shape ``(d,)`` gives the results for ``x[None]`` without the batch axis."""
    spec = MODELS[name]
    if name == "mse":  # one target row shared by all samples
        spec = [*VECTOR, ("mse", TARGET[0])]
    model = build_hessarray(spec, xp.asarray)
    o = (M,) if name == "vector" else ()
    for mode in ("forward", "reverse"):
        for i in (0, 3):
            one = materialize(xp, ha.derivatives(model, xp.asarray(X[i]), mode=mode))
            two = materialize(xp, ha.derivatives(model, xp.asarray(X[i : i + 1]), mode=mode))
            assert one.value.shape == o and one.jacobian.shape == (*o, D) and one.hessian.shape == (*o, D, D)
            for a, b in zip(one, two, strict=True):
                assert_close(a, b[0], 1e-14)
            y = xp.to_numpy(model(xp.asarray(X[i])))
            assert y.shape == o
            assert_close(y, one.value, 1e-14)
            assert xp.to_numpy(ha.jacobian(model, xp.asarray(X[i]), mode=mode)).shape == (*o, D)
            assert xp.to_numpy(ha.hessian(model, xp.asarray(X[i]), mode=mode)).shape == (*o, D, D)


@pytest.mark.parametrize("xp,name", backend_cases(MODELS, ["mse", "ce_int"]), indirect=["xp"])
def test_chunk_sizes_agree(xp, name):
    """Blocks of 1, 3 (not dividing the batch of 4) and more samples than there are all agree
    with autodiff, also for losses whose per-sample targets are sliced with the blocks."""
    spec = MODELS[name]
    model = build_hessarray(spec, xp.asarray)
    ref = cached_torch_reference(spec, X, "0.weight")
    x = xp.asarray(X)
    chunks = (None, 1, 3, 100) if xp.name not in SLOW else (3,)
    for chunk in chunks:
        for mode in ("forward", "reverse"):
            d = materialize(xp, ha.derivatives(model, x, mode=mode, chunk_size=chunk))
            assert_close(d.value, ref["value"], 1e-10, f"value, chunk_size={chunk} ({mode})")
            assert_close(d.jacobian, ref["jacobian"], 1e-10, f"jacobian, chunk_size={chunk} ({mode})")
            assert_close(d.hessian, ref["hessian"], 1e-10, f"hessian, chunk_size={chunk} ({mode})")
            p = materialize(xp, ha.derivatives(model, x, wrt="0.weight", mode=mode, chunk_size=chunk))
            assert_close(p.jacobian, ref["p_grad"], 1e-10, f"d/dW, chunk_size={chunk} ({mode})")
            assert_close(p.hessian, ref["p_hess"], 1e-10, f"d2/dW2, chunk_size={chunk} ({mode})")


def test_per_sample_sums_to_summed(xp):
    model = build_hessarray(MODELS["vector"], xp.asarray)
    x = xp.asarray(X)
    for wrt in ("0.bias", "3.weight"):
        ps = materialize(xp, ha.derivatives(model, x, wrt=wrt, per_sample=True))
        s = materialize(xp, ha.derivatives(model, x, wrt=wrt))
        assert ps.value.shape == (BATCH, M)
        assert_close(ps.value.sum(), s.value, 1e-13, "value")
        assert_close(ps.jacobian.sum(axis=(0, 1)), s.jacobian, 1e-13, "gradient")
        assert_close(ps.hessian.sum(axis=(0, 1)), s.hessian, 1e-13, "hessian")


# -- plans ------------------------------------------------------------------------------------
def test_auto_takes_reverse_only_when_clearly_cheaper():
    """Near a tie the forward mode runs (it measured as fast or faster there)."""
    edge = REVERSE_ADVANTAGE
    assert pick_mode({"forward": 1.0, "reverse": 1.0}) == "forward"
    assert pick_mode({"forward": edge, "reverse": 1.0}) == "forward"
    assert pick_mode({"forward": 1.01 * edge, "reverse": 1.0}) == "reverse"
    assert pick_mode({"forward": 5.0, "reverse": 1.0}) == "reverse"


def test_plan_and_auto_mode():
    # tanh on the 40 inputs themselves: no dense layer narrows them first, reverse is far cheaper
    wide_input = ha.Sequential(ha.Tanh(), ha.Dense(np.ones((2, 40))), ha.Tanh(), ha.Sum())
    narrow_input = ha.Sequential(ha.Dense(np.ones((40, 2))), ha.Tanh(), ha.Dense(np.ones((1, 40))), ha.Sum())
    p_wide = ha.plan(wide_input, np.ones((10, 40)))
    p_narrow = ha.plan(narrow_input, np.ones((10, 2)))
    for p in (p_wide, p_narrow):
        assert isinstance(p, ha.Plan)
        assert set(p.flops) == {"forward", "reverse"}
        assert p.mode == min(p.flops, key=p.flops.get)
        assert p.mode == pick_mode(p.flops)
        assert 1 <= p.chunk_size <= 10
    assert p_wide.mode == "reverse" and p_narrow.mode == "forward"
    # A dense layer narrowing the wide input first: the estimates nearly tie, forward runs.
    narrowed = ha.Sequential(ha.Dense(np.ones((2, 40))), ha.Tanh(), ha.Sum())
    p = ha.plan(narrowed, np.ones((10, 40)))
    assert p.flops["forward"] < REVERSE_ADVANTAGE * p.flops["reverse"] and p.mode == "forward"
    assert ha.plan(narrow_input, np.ones((10, 2)), mode="reverse").mode == "reverse"
    assert ha.plan(narrow_input, np.ones((10, 2)), chunk_size=3).chunk_size == 3
    assert ha.plan(narrow_input, np.ones((10, 2)), chunk_size=50).chunk_size <= 10


def test_auto_equals_planned_mode(xp):
    """``mode="auto"`` gives exactly what the planned mode gives."""
    cases = [(MODELS["sum"], D), ([("dense", np.ones((2, 9)) / 9, None), ("act", "tanh"), ("sum",)], 9)]
    for spec, d in cases[:1] if xp.name in SLOW else cases:  # (eager JAX compiles every new shape)
        model = build_hessarray(spec, xp.asarray)
        x = xp.asarray(np.linspace(-1, 1, BATCH * d).reshape(BATCH, d))
        planned = ha.plan(model, x).mode
        auto = materialize(xp, ha.derivatives(model, x))
        explicit = materialize(xp, ha.derivatives(model, x, mode=planned))
        for a, b in zip(auto, explicit, strict=True):
            np.testing.assert_array_equal(a, b)


# The forward mode keeps the tangents as one (d, n) matrix while every layer so far has a
# constant Jacobian; each shape of that prefix, against torch.func, in every part.
SHARED_PREFIX = {
    "dense_first": [("dense", W1, B1), ("act", "tanh"), ("dense", W2, None)],
    "two_dense_first": [("dense", W1, B1), ("dense", WR, None), ("act", "softplus"), ("dense", W2, None)],
    "activation_first": [("act", "sin"), ("dense", W1, B1), ("act", "tanh"), ("dense", W2, None)],
    "residual_first": [("residual", 0.5, [("dense", _rng.standard_normal((D, D)), None), ("act", "tanh")]), ("sum",)],
    "dense_only": [("dense", W1, B1), ("dense", W2, None)],
}
# Narrowing prefixes (d > n at the first non-affine layer): the tangents are seeded in the
# narrower coordinates and mapped back with S H Sᵀ.
_nr = np.random.default_rng(7)
SHARED_PREFIX.update(
    {
        "narrowing_first": [
            ("dense", _nr.standard_normal((2, D)), _nr.standard_normal(2)),
            ("act", "tanh"),
            ("dense", _nr.standard_normal((3, 2)), None),
            ("act", "sin"),
            ("sum",),
        ],
        "narrowing_two_dense": [
            ("dense", W1, B1),
            ("dense", _nr.standard_normal((1, N)), None),
            ("act", "sin"),
            ("dense", _nr.standard_normal((2, 1)), None),
            ("act", "tanh"),
            ("sum",),
        ],
        "narrowing_vector_output": [
            ("dense", _nr.standard_normal((2, D)), None),
            ("act", "softplus"),
            ("dense", _nr.standard_normal((M, 2)), None),
            ("act", "tanh"),
        ],
        "narrowing_residual_next": [
            ("dense", _nr.standard_normal((2, D)), None),
            ("residual", 0.5, [("dense", _nr.standard_normal((2, 2)), None), ("act", "tanh")]),
            ("sum",),
        ],
    }
)


@pytest.mark.parametrize("name", sorted(SHARED_PREFIX))
@pytest.mark.parametrize("batch", [1, BATCH])  # batch 1, m=1: d > batch·m takes the per-sample path
def test_tangents_shared_by_all_samples(xp, name, batch):
    spec = SHARED_PREFIX[name]
    x = X[:batch]
    ref = cached_torch_reference(spec, x)
    model = build_hessarray(spec, xp.asarray)
    xx = xp.asarray(x)
    d = materialize(xp, ha.derivatives(model, xx, mode="forward"))
    assert_close(d.jacobian, ref["jacobian"], 1e-12, "jacobian")
    assert_close(d.hessian, ref["hessian"], 1e-12, "hessian")
    if model.scalar_output:
        diag = materialize(xp, ha.hessian_diagonal(model, xx))
        lap = materialize(xp, ha.laplacian(model, xx))
        want = np.diagonal(ref["hessian"], axis1=-2, axis2=-1)
        assert_close(diag, want, 1e-12, "diagonal")
        assert_close(lap, want.sum(-1), 1e-12, "laplacian")
