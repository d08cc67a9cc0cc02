"""``hessarray.convert.from_torch`` and ``hessarray.io.save`` / ``load``, on every backend.

Converted models are checked against PyTorch's own forward pass and ``torch.func.hessian``
in float64; saved models must come back with the same arrays, outputs and Hessians, and
``load`` must refuse pickles and inconsistent files before building anything.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from backends import materialize

import hessarray as ha
import hessarray.io as hio
from hessarray.convert import from_torch
from hessarray.io import load, save

RTOL = 1e-10
_rng = np.random.default_rng(7)
BATCH, D = 4, 3
X = _rng.standard_normal((BATCH, D))


def assert_close(actual, expected, rtol=RTOL):
    """``max|actual - expected| <= rtol * max(1, max|expected|)``, shapes equal."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= rtol * scale, f"max abs error {err:.3g} > {rtol:g} * {scale:.3g}"


@pytest.fixture
def torch():
    """PyTorch (optional: the tests that need it skip without it)."""
    return pytest.importorskip("torch")


# == from_torch =====================================================================================
def _torch_reference(torch, net, x_np):
    """PyTorch's value ``(B, o)`` and per-sample Hessians ``(B, o, d, d)`` of ``net``."""
    xt = torch.from_numpy(x_np)
    value = net(xt).detach().numpy()
    hess = torch.func.vmap(torch.func.hessian(net))(xt).detach().numpy()
    return value, hess


def _net(torch):
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softplus(beta=1.5), nn.Linear(4, 2)).double()


def test_from_torch_matches_torch_on_every_backend(xp, torch):
    net = _net(torch)
    model = from_torch(net, xp=xp.xp, device=xp.device)
    assert [type(layer).__name__ for layer in model] == ["Dense", "Tanh", "Dense", "Softplus", "Dense"]
    assert model[3].beta == 1.5
    x = xp.asarray(X)
    for _, a in model.arrays():
        assert type(a) is type(x)
        assert xp.device_of(a) == xp.device
        assert a.dtype == x.dtype
    summed = ha.Sequential(*model, ha.Sum())
    value, hess, s_value, s_hess = materialize(xp, (model(x), ha.hessian(model, x), summed(x), ha.hessian(summed, x)))
    expected_value, expected_hess = _torch_reference(torch, net, X)
    assert_close(value, expected_value)
    assert_close(hess, expected_hess)
    assert_close(s_value, expected_value.sum(axis=1))
    assert_close(s_hess, expected_hess.sum(axis=1))


ACTIVATIONS = {
    "Tanh": lambda nn: nn.Tanh(),
    "Sigmoid": lambda nn: nn.Sigmoid(),
    "Softplus": lambda nn: nn.Softplus(beta=2.5),
    "ReLU": lambda nn: nn.ReLU(),
    "LeakyReLU": lambda nn: nn.LeakyReLU(0.2),
    "ELU": lambda nn: nn.ELU(alpha=0.7),
    "SiLU": lambda nn: nn.SiLU(),
    "Identity": lambda nn: nn.Identity(),
}
HYPER = {"Softplus": ("beta", 2.5), "LeakyReLU": ("slope", 0.2), "ELU": ("alpha", 0.7)}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_from_torch_each_activation(torch, name):
    torch.manual_seed(1)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(D, 5), ACTIVATIONS[name](nn), nn.Linear(5, 2)).double()
    model = from_torch(net)
    assert type(model[1]) is getattr(ha, name)
    if name in HYPER:
        attr, v = HYPER[name]
        assert getattr(model[1], attr) == v
    expected_value, expected_hess = _torch_reference(torch, net, X)
    assert_close(model(X), expected_value)
    assert_close(ha.hessian(model, X), expected_hess)


def test_from_torch_softplus_threshold_is_ignored(torch):
    # PyTorch switches to the identity above the threshold; hessarray stays exact.
    net = torch.nn.Sequential(torch.nn.Softplus(beta=2.0, threshold=0.5))
    model = from_torch(net)
    x = np.array([[3.0, -1.0]])
    np.testing.assert_allclose(model(x), np.logaddexp(0.0, 2.0 * x) / 2.0, rtol=1e-15)


def test_from_torch_flattens_nested_sequential(torch):
    nn = torch.nn
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Linear(D, 4),
        nn.Sequential(nn.Tanh(), nn.Sequential(nn.Linear(4, 4), nn.Identity())),
        nn.Sequential(),
        nn.SiLU(),
        nn.Linear(4, 2, bias=False),
    ).double()
    model = from_torch(net)
    assert [type(layer).__name__ for layer in model] == ["Dense", "Tanh", "Dense", "Identity", "SiLU", "Dense"]
    assert model[5].bias is None
    expected_value, expected_hess = _torch_reference(torch, net, X)
    assert_close(model(X), expected_value)
    assert_close(ha.hessian(model, X), expected_hess)


def test_from_torch_repeated_module(torch):
    # The same module instance twice: PyTorch applies it twice, so must the conversion.
    torch.manual_seed(4)
    nn = torch.nn
    act, square = nn.Tanh(), nn.Linear(3, 3)
    net = nn.Sequential(square, act, square, act).double()
    model = from_torch(net)
    assert [type(layer).__name__ for layer in model] == ["Dense", "Tanh", "Dense", "Tanh"]
    expected_value, expected_hess = _torch_reference(torch, net, X)
    assert_close(model(X), expected_value)
    assert_close(ha.hessian(model, X), expected_hess)


def test_from_torch_rejects_non_sequential(torch):
    nn = torch.nn
    with pytest.raises(TypeError, match=r"torch\.nn\.Sequential, got .*Linear"):
        from_torch(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ModuleList"):
        from_torch(nn.ModuleList([nn.Linear(2, 2)]))
    with pytest.raises(TypeError, match="list"):
        from_torch([nn.Linear(2, 2)])

    class Doubling(nn.Sequential):  # a different forward: converting it would be wrong
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match="Doubling"):
        from_torch(Doubling(nn.Linear(2, 2)))


@pytest.mark.parametrize(
    ("make", "name"), [(lambda nn: nn.Dropout(0.1), "Dropout"), (lambda nn: nn.Conv1d(1, 1, 1), "Conv1d")]
)
def test_from_torch_rejects_unsupported_modules(torch, make, name):
    nn = torch.nn
    with pytest.raises(TypeError, match=rf"module 2 \({name}\) is not supported; supported: Linear, Tanh, Sigmoid"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.Tanh(), make(nn)))
    with pytest.raises(TypeError, match=rf"module 1\.0 \({name}\) is not supported"):
        from_torch(nn.Sequential(nn.Linear(2, 2), nn.Sequential(make(nn), nn.Tanh())))


def test_from_torch_subclasses(torch):
    nn = torch.nn

    class MyTanh(nn.Tanh):  # changes forward: refused
        def forward(self, x):
            return 2 * torch.tanh(x)

    class MyLinear(nn.Linear):  # keeps Linear.forward: accepted
        pass

    with pytest.raises(TypeError, match=r"module 1 \(MyTanh\)"):
        from_torch(nn.Sequential(nn.Linear(2, 2), MyTanh()))
    model = from_torch(nn.Sequential(MyLinear(2, 3)))
    assert type(model[0]) is ha.Dense


def test_from_torch_copies_weights(torch):
    net = _net(torch)
    as_numpy = from_torch(net)
    as_torch = from_torch(net, xp=torch)
    before = net[0].weight.detach().numpy().copy()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    np.testing.assert_array_equal(as_numpy[0].weight, before)
    np.testing.assert_array_equal(as_torch[0].weight.numpy(), before)
    w = as_torch[0].weight
    assert isinstance(w, torch.Tensor) and not w.requires_grad and w.grad_fn is None
    assert w.device == net[0].weight.device and w.dtype == torch.float64


def test_from_torch_dtype_and_device(torch):
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))  # float32
    assert from_torch(net)[0].weight.dtype == np.float32
    for dtype in ("float64", np.float64, np.dtype("float64")):
        assert from_torch(net, dtype=dtype)[0].weight.dtype == np.float64
    for dtype in ("float64", torch.float64):
        model = from_torch(net, xp=torch, device="cpu", dtype=dtype)
        assert model[0].weight.dtype == torch.float64 and model[0].weight.device.type == "cpu"
    model = from_torch(net, dtype="float64")
    expected = net.double()(torch.from_numpy(X)).detach().numpy()
    assert_close(model(X), expected)  # float32 weights are exact in float64
    with pytest.raises(TypeError, match="dtype"):
        from_torch(net, dtype="int32")
    with pytest.raises(TypeError, match="xp must be an array namespace"):
        from_torch(net, xp="numpy")


def test_from_torch_empty(torch):
    with pytest.raises(ValueError, match="no layers"):
        from_torch(torch.nn.Sequential(torch.nn.Sequential()))


def test_modules_import_torch_lazily():
    code = "import sys, hessarray.convert, hessarray.io; assert 'torch' not in sys.modules, 'torch imported'"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root)


# == save / load ====================================================================================
def _w(*shape, scale=0.4):
    return _rng.standard_normal(shape) * scale


#: Every array of the models below, drawn once (NumPy, float64).
W = {
    "w0": _w(5, D),
    "b0": _w(5),
    "w1": _w(5, 5),
    "b1": _w(5, 1),
    "w2": _w(5, 5),
    "b2": _w(5),
    "w3": _w(5, 5),
    "w4": _w(5, 5),
    "w5": _w(5, 5, scale=0.2),
    "w6": _w(2, 5),
    "b6": _w(2),
    "mse": _w(BATCH, 2),
    "mse_shared": _w(2),
    "onehot": np.eye(2)[[0, 1, 1, 0]],
    "labels": np.array([1, 0, 0, 1], dtype=np.int64),
}
TERMINALS = ("none", "sum", "mse", "mse_shared", "ce_labels", "ce_onehot")


def build_model(asarray, terminal="mse", dtype=np.float64, full=True):
    """Every built-in layer type (``full``; else a short body), hyper-parameters off their
    defaults, nested residual blocks, then the ``terminal`` layer."""
    a = {k: asarray(v.astype(dtype) if v.dtype.kind == "f" else v) for k, v in W.items()}
    short = [
        ha.Dense(a["w0"], a["b0"]),
        ha.Softplus(2.5),
        ha.Residual(ha.Dense(a["w1"], a["b1"]), ha.Tanh(), h=0.5),
        ha.Dense(a["w6"], a["b6"]),
    ]
    layers = (
        short
        if not full
        else [
            ha.Dense(a["w0"], a["b0"]),
            ha.Softplus(2.5),
            ha.Dense(a["w1"], a["b1"]),
            ha.Tanh(),
            ha.Sigmoid(),
            ha.Residual(
                ha.Dense(a["w2"], a["b2"]),
                ha.SiLU(),
                ha.Residual(ha.Dense(a["w3"]), ha.ELU(0.5), h=0.3),
                ha.LeakyReLU(0.2),
                h=0.5,
            ),
            ha.ReLU(),
            ha.Dense(a["w4"]),
            ha.LogCosh(),
            ha.Sin(),
            ha.Cos(),
            ha.Identity(),
            ha.Square(),
            ha.Dense(a["w5"]),
            ha.Exp(),
            ha.Power(2.5),
            ha.Power(3.0),
            ha.Dense(a["w6"], a["b6"]),
        ]
    )
    terminal_layer = {
        "none": None,
        "sum": ha.Sum(),
        "mse": ha.MSELoss(a["mse"]),
        "mse_shared": ha.MSELoss(a["mse_shared"]),
        "ce_labels": ha.SoftmaxCrossEntropy(a["labels"]),
        "ce_onehot": ha.SoftmaxCrossEntropy(a["onehot"]),
    }[terminal]
    return ha.Sequential(*layers, *([] if terminal_layer is None else [terminal_layer]))


def small_model():
    """A small model for the tests of broken files (keys listed in :data:`SMALL_KEYS`)."""
    return ha.Sequential(
        ha.Dense(W["w0"], W["b0"]),
        ha.Tanh(),
        ha.Residual(ha.Dense(W["w1"]), ha.Softplus(2.0), h=0.5),
        ha.Dense(W["w6"]),
        ha.MSELoss(W["mse"]),
    )


SMALL_KEYS = ["layers.0.bias", "layers.0.weight", "layers.2.layers.0.weight", "layers.3.weight", "layers.4.target"]


def _contents(path):
    """``(architecture as a dict, {key: array})`` of a saved file."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return json.loads(str(arrays.pop("__architecture__")[()])), arrays


def _write(path, architecture, arrays):
    np.savez(path, __architecture__=np.array(json.dumps(architecture)), **arrays)


def _results(backend, model, x):
    return materialize(backend, (model(x), ha.hessian(model, x)))


#: round-trip cases: (all layer types or a short body, terminal layer)
ROUND_TRIPS = {"all_layers": (True, "mse"), **{t: (False, t) for t in TERMINALS}}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_round_trip_on_every_backend(xp, tmp_path, case):
    full, terminal = ROUND_TRIPS[case]
    model = build_model(xp.asarray, terminal, full=full)
    path = tmp_path / "model.npz"
    save(model, path)
    loaded = load(path, xp=xp.xp, device=xp.device)
    assert repr(loaded) == repr(model)  # layer types, hyper-parameters and shapes
    assert len(loaded.arrays()) == len(model.arrays())
    for (name, a), (name2, b) in zip(model.arrays(), loaded.arrays(), strict=True):
        assert name == name2
        assert type(b) is type(a) and b.dtype == a.dtype and xp.device_of(b) == xp.device_of(a)
        assert tuple(b.shape) == tuple(a.shape)
        np.testing.assert_array_equal(xp.to_numpy(b), xp.to_numpy(a))
    x = xp.asarray(X)
    (v1, h1), (v2, h2) = _results(xp, model, x), _results(xp, loaded, x)
    if xp.lazy:  # the loaded Dask arrays are one chunk each: sums may round differently
        assert_close(v2, v1, 1e-13)
        assert_close(h2, h1, 1e-13)
    else:
        np.testing.assert_array_equal(v2, v1)
        np.testing.assert_array_equal(h2, h1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_dtype(xp, dtype):
    model = build_model(xp.asarray, "ce_labels", dtype=dtype, full=False)
    buffer = io.BytesIO()
    save(model, buffer)
    buffer.seek(0)
    loaded = load(buffer, xp=xp.xp, device=xp.device)
    for (_, a), (_, b) in zip(model.arrays(), loaded.arrays(), strict=True):
        assert b.dtype == a.dtype
    x = xp.asarray(X.astype(dtype))
    (v1, h1), (v2, h2) = _results(xp, model, x), _results(xp, loaded, x)
    assert v2.dtype == dtype and h2.dtype == dtype
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    assert_close(v2, v1, rtol)
    assert_close(h2, h1, rtol)


def test_across_backends(xp, tmp_path):
    """Saved from NumPy, loaded on the backend (and back): the same arrays and function."""
    reference = build_model(np.asarray, "mse")
    save(reference, tmp_path / "numpy.npz")
    loaded = load(tmp_path / "numpy.npz", xp=xp.xp, device=xp.device)
    v, h = _results(xp, loaded, xp.asarray(X))
    assert_close(v, reference(X), 1e-12)
    assert_close(h, ha.hessian(reference, X), 1e-12)

    save(build_model(xp.asarray, "mse"), tmp_path / "backend.npz")
    back = load(tmp_path / "backend.npz")
    for (_, a), (_, b) in zip(reference.arrays(), back.arrays(), strict=True):
        assert isinstance(b, np.ndarray)
        np.testing.assert_array_equal(b, a)
    np.testing.assert_array_equal(ha.hessian(back, X), ha.hessian(reference, X))


def test_from_torch_then_save_load(xp, torch, tmp_path):
    net = _net(torch)
    model = from_torch(net, xp=torch)
    save(model, tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz", xp=xp.xp, device=xp.device)
    expected_value, expected_hess = _torch_reference(torch, net, X)
    v, h = _results(xp, loaded, xp.asarray(X))
    assert_close(v, expected_value)
    assert_close(h, expected_hess)


def test_file_format(tmp_path):
    path = tmp_path / "model.bin"
    assert save(small_model(), path) is None
    assert path.exists() and not (tmp_path / "model.bin.npz").exists()  # written exactly there
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["__architecture__", *SMALL_KEYS]
        assert all(data[k].dtype.kind != "O" for k in data.files)
        raw = data["__architecture__"]
    assert raw.dtype.kind == "U" and raw.ndim == 0
    arch = json.loads(str(raw[()]))
    assert arch["format"] == "hessarray.Sequential" and arch["version"] == 1
    layers = arch["layers"]
    assert [spec["type"] for spec in layers] == ["Dense", "Tanh", "Residual", "Dense", "MSELoss"]
    assert layers[0]["weight"] == {"key": "layers.0.weight", "shape": [5, D], "dtype": "float64"}
    assert layers[0]["bias"]["key"] == "layers.0.bias" and layers[3]["bias"] is None
    assert layers[2]["h"] == 0.5
    assert layers[2]["layers"][0]["weight"]["key"] == "layers.2.layers.0.weight"
    assert layers[2]["layers"][1] == {"type": "Softplus", "beta": 2.0}
    assert layers[4]["target"]["key"] == "layers.4.target"


def test_architecture_as_utf8_bytes(tmp_path):
    save(small_model(), tmp_path / "m.npz")
    arch, arrays = _contents(tmp_path / "m.npz")
    text = json.dumps(arch).encode("utf-8")
    np.savez(tmp_path / "bytes.npz", __architecture__=np.frombuffer(text, dtype=np.uint8), **arrays)
    np.testing.assert_array_equal(load(tmp_path / "bytes.npz")(X), small_model()(X))


# -- refusing pickles ---------------------------------------------------------------------------------
UNPICKLED: list[str] = []


def _unpickled(tag):
    UNPICKLED.append(tag)
    return tag


class Trap:
    """Records it if it is ever unpickled."""

    def __reduce__(self):
        return (_unpickled, ("trap",))


@pytest.mark.parametrize("where", ["layers.0.weight", "__architecture__"])
def test_load_refuses_object_arrays(tmp_path, where):
    save(small_model(), tmp_path / "m.npz")
    arch, arrays = _contents(tmp_path / "m.npz")
    entries = {"__architecture__": np.array(json.dumps(arch)), **arrays}
    entries[where] = np.array([Trap()], dtype=object)
    np.savez(tmp_path / "bad.npz", **entries)  # np.save pickles object arrays
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="pickle"):
        load(tmp_path / "bad.npz")
    assert UNPICKLED == []


def test_load_refuses_pickle_files(tmp_path):
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump({"model": Trap()}, f)
    UNPICKLED.clear()
    with pytest.raises(ValueError, match="pickled"):
        load(tmp_path / "model.pkl")
    assert UNPICKLED == []


def test_load_refuses_other_files(tmp_path):
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ValueError, match="single array"):
        load(tmp_path / "single.npy")
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(ValueError, match="not a valid .npz"):
        load(tmp_path / "broken.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="__architecture__"):
        load(tmp_path / "plain.npz")


# -- inconsistent files ---------------------------------------------------------------------------------
def _edit_architecture(arch, arrays):
    arch["layers"][2]["layers"][1]["type"] = "Gelu"


def _drop_array(arch, arrays):
    del arrays["layers.2.layers.0.weight"]


def _add_array(arch, arrays):
    arrays["layers.9.weight"] = np.zeros((2, 2))


def _reshape_array(arch, arrays):
    arrays["layers.0.weight"] = np.zeros((5, 4))


def _retype_array(arch, arrays):
    arrays["layers.0.weight"] = arrays["layers.0.weight"].astype(np.float32)


def _inconsistent_bias(arch, arrays):
    arrays["layers.0.bias"] = np.zeros(4)
    arch["layers"][0]["bias"]["shape"] = [4]


def _inconsistent_widths(arch, arrays):
    arrays["layers.3.weight"] = np.zeros((2, 4))
    arch["layers"][3]["weight"]["shape"] = [2, 4]


def _residual_width(arch, arrays):
    arrays["layers.2.layers.0.weight"] = np.zeros((4, 5))
    arch["layers"][2]["layers"][0]["weight"]["shape"] = [4, 5]


def _target_width(arch, arrays):
    arrays["layers.4.target"] = np.zeros((BATCH, 3))
    arch["layers"][4]["target"]["shape"] = [BATCH, 3]


def _string_hyper(arch, arrays):
    arch["layers"][2]["layers"][1]["beta"] = "2.0"


def _negative_beta(arch, arrays):
    arch["layers"][2]["layers"][1]["beta"] = -1.0


def _missing_field(arch, arrays):
    del arch["layers"][2]["h"]


def _extra_field(arch, arrays):
    arch["layers"][1]["slope"] = 0.1


def _terminal_not_last(arch, arrays):
    arch["layers"].insert(1, {"type": "Sum"})


def _wrong_version(arch, arrays):
    arch["version"] = 99


def _no_layers(arch, arrays):
    arch["layers"] = []
    arrays.clear()


def _bad_reference(arch, arrays):
    arch["layers"][0]["weight"] = "layers.0.weight"


BROKEN = {
    _edit_architecture: "unknown layer type 'Gelu'",
    _drop_array: r"missing array 'layers\.2\.layers\.0\.weight'",
    _add_array: r"unexpected arrays \['layers\.9\.weight'\]",
    _reshape_array: r"'layers\.0\.weight' has shape \(5, 4\) but the architecture says \(5, 3\)",
    _retype_array: "has dtype float32 but the architecture says float64",
    _inconsistent_bias: r"layers\.0\.bias has shape \(4,\), inconsistent with weight of shape \(5, 3\)",
    _inconsistent_widths: r"layers\.3 \(Dense\) expects input width 4 .* receives width 5",
    _residual_width: "must preserve the width",
    _target_width: r"layers\.4 \(MSELoss\) expects input width 3",
    _string_hyper: r"layers\.2\.layers\.1\.beta must be a finite number",
    _negative_beta: "beta must be positive",
    _missing_field: r"missing fields \['h'\]",
    _extra_field: r"unexpected fields \['slope'\]",
    _terminal_not_last: "cannot come before the last layer",
    _wrong_version: "unsupported format version 99",
    _no_layers: "non-empty list",
    _bad_reference: "fields key, shape and dtype",
}


@pytest.mark.parametrize("edit", list(BROKEN), ids=[f.__name__.strip("_") for f in BROKEN])
def test_load_rejects_inconsistent_files(tmp_path, monkeypatch, edit):
    save(small_model(), tmp_path / "m.npz")
    arch, arrays = _contents(tmp_path / "m.npz")
    edit(arch, arrays)
    _write(tmp_path / "bad.npz", arch, arrays)
    built = []
    monkeypatch.setattr(hio, "from_numpy", lambda *a, **k: built.append(a))
    with pytest.raises(ValueError, match=BROKEN[edit]):
        load(tmp_path / "bad.npz")
    assert built == []  # everything is checked before any array is converted


def test_load_rejects_bad_json(tmp_path):
    save(small_model(), tmp_path / "m.npz")
    _, arrays = _contents(tmp_path / "m.npz")
    for text, message in [("{not json", "not valid JSON"), ('{"a": NaN}', "NaN"), ("[1, 2]", "JSON object")]:
        np.savez(tmp_path / "bad.npz", __architecture__=np.array(text), **arrays)
        with pytest.raises(ValueError, match=message):
            load(tmp_path / "bad.npz")


# -- what cannot be saved -------------------------------------------------------------------------------
def _cube():
    return ha.Elementwise(lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z, name="cube")


class Custom(ha.Tanh):
    """A subclass: not one of the built-in layers, even if it looks like one."""


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            lambda: ha.Sequential(ha.Dense(W["w0"]), _cube(), ha.Sum()),
            r"layers\.1 \(Elementwise\(cube\)\).*not serialisable",
        ),
        (lambda: ha.Sequential(ha.Residual(ha.Dense(W["w1"]), _cube())), r"layers\.0\.layers\.1 \(Elementwise"),
        (lambda: ha.Sequential(Custom()), r"layers\.0 .*Custom is not one of hessarray's built-in layers"),
        (lambda: ha.Sequential(ha.LeakyReLU(float("nan"))), "not finite"),
    ],
    ids=["elementwise", "elementwise_in_residual", "subclass", "nan_hyper_parameter"],
)
def test_save_refuses(tmp_path, model, message):
    with pytest.raises(ValueError, match=message):
        save(model(), tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_save_needs_a_sequential(tmp_path):
    with pytest.raises(TypeError, match="Sequential"):
        save(ha.Tanh(), tmp_path / "m.npz")
