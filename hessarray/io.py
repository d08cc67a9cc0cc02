"""Saving and loading models as one ``.npz`` file: plain arrays plus the architecture as JSON.

File format (version 1)
-----------------------
:func:`save` writes an uncompressed NumPy ``.npz`` archive (``np.savez``) holding

* one array per weight, bias or target, under the key the architecture refers to
  (``"layers.0.weight"``, ``"layers.2.layers.0.bias"`` inside a residual block,
  ``"layers.5.target"``); weights and biases are floating arrays in the model's own dtype,
  targets keep theirs (integer class labels stay integers);
* ``"__architecture__"``: a 0-d ``numpy.str_`` array holding JSON text (a 1-d ``uint8`` array
  of UTF-8 bytes is also accepted on loading)::

      {"format": "hessarray.Sequential", "version": 1,
       "layers": [{"type": "Dense",
                   "weight": {"key": "layers.0.weight", "shape": [8, 2], "dtype": "float64"},
                   "bias": null},
                  {"type": "Softplus", "beta": 2.0},
                  {"type": "Residual", "h": 0.5, "layers": [...]},
                  {"type": "Sum"}]}

No object arrays are written and nothing is ever unpickled or evaluated: :func:`load` opens
the file with ``allow_pickle=False`` and checks the whole description (layer types, fields,
hyper-parameters, array names, shapes, dtypes and the widths of consecutive layers) before it
builds any layer. User-defined :class:`~hessarray.Elementwise` layers hold Python functions
and cannot be saved.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Callable
from typing import Any, NoReturn

import array_api_compat
import numpy as np

from .convert import FLOAT_DTYPES, from_numpy, resolve_namespace
from .layers import (
    ELU,
    Cos,
    Dense,
    Elementwise,
    Exp,
    Identity,
    Layer,
    LeakyReLU,
    LogCosh,
    MSELoss,
    Power,
    ReLU,
    Residual,
    Sigmoid,
    SiLU,
    Sin,
    SoftmaxCrossEntropy,
    Softplus,
    Square,
    Sum,
    Tanh,
)
from .model import Sequential

__all__ = ["load", "save"]

FORMAT = "hessarray.Sequential"
VERSION = 1
ARCHITECTURE_KEY = "__architecture__"

#: Activations without hyper-parameters.
PLAIN = {cls.__name__: cls for cls in (Tanh, Sigmoid, ReLU, SiLU, LogCosh, Sin, Cos, Exp, Square, Identity)}
#: Activations with one hyper-parameter: name -> (class, attribute = constructor argument).
HYPER = {
    "Softplus": (Softplus, "beta"),
    "LeakyReLU": (LeakyReLU, "slope"),
    "ELU": (ELU, "alpha"),
    "Power": (Power, "p"),
}
#: Dtypes a target may have (weights and biases: FLOAT_DTYPES only).
TARGET_DTYPES = FLOAT_DTYPES + ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool")
#: Every layer type a file may name, with the fields its JSON object must have.
FIELDS = {
    **{name: () for name in PLAIN},
    **{name: (attr,) for name, (_, attr) in HYPER.items()},
    "Dense": ("weight", "bias"),
    "Residual": ("h", "layers"),
    "Sum": (),
    "MSELoss": ("target",),
    "SoftmaxCrossEntropy": ("labels",),
}
TERMINAL = ("Sum", "MSELoss", "SoftmaxCrossEntropy")


# -- arrays to NumPy ------------------------------------------------------------------------------
def to_numpy(a: Any) -> np.ndarray:
    """Any array-API array as a NumPy array on the host (computing Dask graphs)."""
    if isinstance(a, np.ndarray | np.generic):
        return np.asarray(a)
    if array_api_compat.is_torch_array(a):
        return a.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(a):
        return a.get()
    if array_api_compat.is_dask_array(a):
        return np.asarray(a.compute())
    if array_api_compat.is_jax_array(a):
        return np.asarray(a)
    if type(a).__module__.split(".")[0] == "array_api_strict":
        import array_api_strict

        return np.asarray(a.to_device(array_api_strict.Device("CPU_DEVICE")))
    try:
        return np.asarray(array_api_compat.to_device(a, "cpu"))
    except Exception:
        return np.from_dlpack(a)


# -- saving ------------------------------------------------------------------------------------
def _describe(layers: list[Layer], prefix: str, arrays: dict[str, np.ndarray]) -> list[dict]:
    """The JSON description of ``layers``; their arrays are added to ``arrays``."""

    def ref(a: Any, key: str, allowed: tuple[str, ...]) -> dict:
        host = to_numpy(a)
        if host.dtype.name not in allowed:
            raise ValueError(f"cannot save {key}: dtype {host.dtype} is not one of {', '.join(allowed)}")
        arrays[key] = host
        return {"key": key, "shape": list(host.shape), "dtype": host.dtype.name}

    out = []
    for i, layer in enumerate(layers):
        where = f"{prefix}{i}"
        kind = type(layer)
        name = kind.__name__
        if kind is Elementwise:
            raise ValueError(
                f"cannot save {where} ({layer!r}): Elementwise layers hold user functions (f, df, d2f), "
                f"which are not serialisable; rebuild the layer after loading instead"
            )
        if kind is Dense:
            bias = None if layer.bias is None else ref(layer.bias, f"{where}.bias", FLOAT_DTYPES)
            out.append({"type": name, "weight": ref(layer.weight, f"{where}.weight", FLOAT_DTYPES), "bias": bias})
        elif name in PLAIN and kind is PLAIN[name]:
            out.append({"type": name})
        elif name in HYPER and kind is HYPER[name][0]:
            attr = HYPER[name][1]
            out.append({"type": name, attr: float(getattr(layer, attr))})
        elif kind is Residual:
            inner = _describe(layer.layers, f"{where}.layers.", arrays)
            out.append({"type": name, "h": float(layer.h), "layers": inner})
        elif kind is Sum:
            out.append({"type": name})
        elif kind is MSELoss:
            out.append({"type": name, "target": ref(layer.target, f"{where}.target", TARGET_DTYPES)})
        elif kind is SoftmaxCrossEntropy:
            out.append({"type": name, "labels": ref(layer.target, f"{where}.target", TARGET_DTYPES)})
        else:
            raise ValueError(
                f"cannot save {where} ({layer!r}): layer type {kind.__module__}.{kind.__qualname__} "
                f"is not one of hessarray's built-in layers ({', '.join(FIELDS)})"
            )
    return out


def save(model: Sequential, path: str | os.PathLike | Any) -> None:
    """Write ``model`` (architecture, weights and targets) to one ``.npz`` file.

    Parameters
    ----------
    model : Sequential
        A model of hessarray's built-in layers, on any backend and device; arrays are copied
        to the host (Dask graphs are computed) and stored in their own dtype.
    path : str, os.PathLike or binary file object
        Written exactly as given (no ``.npz`` suffix is added); an existing file is replaced.

    Raises
    ------
    ValueError
        If the model holds a layer that cannot be saved: an :class:`~hessarray.Elementwise`
        layer (user functions) or a layer type that is not built in (the message names the
        layer and where it is, e.g. ``layers.2.layers.0``), or a non-finite hyper-parameter.
        Nothing is written then.
    TypeError
        If ``model`` is not a :class:`~hessarray.Sequential`.

    See Also
    --------
    load : the inverse.

    Examples
    --------
    >>> import os, tempfile, numpy as np, hessarray as ha
    >>> from hessarray.io import load, save
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((8, 2)), rng.standard_normal(8)),
    ...                       ha.Softplus(2.0), ha.Residual(ha.Dense(rng.standard_normal((8, 8))),
    ...                       ha.Tanh(), h=0.5), ha.Dense(rng.standard_normal((1, 8))), ha.Sum())
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = os.path.join(tmp, "model.npz")
    ...     save(model, path)
    ...     with np.load(path, allow_pickle=False) as data:
    ...         keys = sorted(data.files)
    ...     loaded = load(path)
    >>> keys
    ['__architecture__', 'layers.0.bias', 'layers.0.weight', 'layers.2.layers.0.weight', 'layers.3.weight']
    >>> x = rng.standard_normal((4, 2))
    >>> bool(np.array_equal(ha.hessian(loaded, x), ha.hessian(model, x)))
    True
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"save expects a hessarray.Sequential, got {type(model).__name__}")
    arrays: dict[str, np.ndarray] = {}
    architecture = {"format": FORMAT, "version": VERSION, "layers": _describe(model.layers, "layers.", arrays)}
    try:
        text = json.dumps(architecture, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"cannot save the model: a hyper-parameter is not finite ({exc})") from None
    arrays[ARCHITECTURE_KEY] = np.array(text, dtype=np.str_)
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# -- loading ---------------------------------------------------------------------------------------
class _Checker:
    """Validates a decoded architecture against the file's arrays, before anything is built."""

    def __init__(self, arrays: dict[str, np.ndarray], fail: Callable[[str], NoReturn]) -> None:
        self.arrays = arrays
        self.fail = fail
        self.used: set[str] = set()

    def number(self, spec: dict, field: str, where: str) -> float:
        v = spec[field]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            self.fail(f"{where}.{field} must be a finite number, got {v!r}")
        return float(v)

    def array(self, spec: dict, field: str, where: str, allowed: tuple[str, ...]) -> np.ndarray:
        r = spec[field]
        if not isinstance(r, dict) or set(r) != {"key", "shape", "dtype"}:
            self.fail(f"{where}.{field} must be an object with exactly the fields key, shape and dtype, got {r!r}")
        key, shape, dtype = r["key"], r["shape"], r["dtype"]
        if not isinstance(key, str) or key == ARCHITECTURE_KEY:
            self.fail(f"{where}.{field}.key must be the name of an array, got {key!r}")
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape):
            self.fail(f"{where}.{field}.shape must be a list of non-negative integers, got {shape!r}")
        if dtype not in allowed:
            self.fail(f"{where}.{field}.dtype must be one of {', '.join(allowed)}, got {dtype!r}")
        if key in self.used:
            self.fail(f"array {key!r} is referred to twice (again by {where}.{field})")
        self.used.add(key)
        if key not in self.arrays:
            self.fail(f"missing array {key!r} (for {where}.{field}); the file holds {sorted(self.arrays)}")
        a = self.arrays[key]
        if tuple(a.shape) != tuple(shape):
            self.fail(f"array {key!r} has shape {tuple(a.shape)} but the architecture says {tuple(shape)}")
        if a.dtype.name != dtype:
            self.fail(f"array {key!r} has dtype {a.dtype} but the architecture says {dtype}")
        return a

    def chain(self, specs: Any, where: str, n: int | None, inside_residual: bool) -> tuple[int | None, int | None]:
        """Check ``specs``; return (input width, output width), ``None`` where not fixed."""
        if not isinstance(specs, list) or not specs:
            self.fail(f"{where} must be a non-empty list of layers, got {specs!r}")
        entering = n
        for i, spec in enumerate(specs):
            at = f"{where}.{i}"
            if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
                self.fail(f"{at} must be an object with a string 'type', got {spec!r}")
            kind = spec["type"]
            if kind not in FIELDS:
                self.fail(f"{at}: unknown layer type {kind!r}; known types are {', '.join(FIELDS)}")
            expected = {"type", *FIELDS[kind]}
            if set(spec) != expected:
                missing, extra = sorted(expected - set(spec)), sorted(set(spec) - expected)
                self.fail(f"{at} ({kind}): missing fields {missing}, unexpected fields {extra}")
            if kind in TERMINAL and (inside_residual or i != len(specs) - 1):
                place = "inside a residual block" if inside_residual else "before the last layer"
                self.fail(f"{at} ({kind}) reduces each sample to a number and cannot come {place}")

            def need(width: int, what: str, at: str = at, kind: str = kind, n: int | None = n) -> None:
                if n is not None and n != width:
                    self.fail(f"{at} ({kind}) expects input width {width} ({what}) but receives width {n}")

            if kind in HYPER:
                v = self.number(spec, HYPER[kind][1], at)
                if kind == "Softplus" and not v > 0:
                    self.fail(f"{at}.beta must be positive, got {v}")
            elif kind == "Dense":
                w = self.array(spec, "weight", at, FLOAT_DTYPES)
                if w.ndim != 2:
                    self.fail(f"{at}.weight must be 2-D (out, in), got shape {tuple(w.shape)}")
                if spec["bias"] is not None:
                    b = self.array(spec, "bias", at, FLOAT_DTYPES)
                    if tuple(b.shape) not in ((w.shape[0],), (w.shape[0], 1)):
                        self.fail(
                            f"{at}.bias has shape {tuple(b.shape)}, inconsistent with weight of shape "
                            f"{tuple(w.shape)} (expected ({w.shape[0]},) or ({w.shape[0]}, 1))"
                        )
                need(w.shape[1], f"weight shape {tuple(w.shape)}")
                if n is None:
                    entering = w.shape[1]
                n = w.shape[0]
            elif kind == "Residual":
                self.number(spec, "h", at)
                e, o = self.chain(spec["layers"], f"{at}.layers", n, True)
                if e is not None and o != e:
                    self.fail(f"{at} (Residual): its block maps width {e} to {o}; it must preserve the width")
                if n is None and e is not None:
                    entering = n = e
            elif kind == "MSELoss":
                t = self.array(spec, "target", at, TARGET_DTYPES)
                if t.ndim not in (1, 2):
                    self.fail(f"{at}.target must have shape (batch, m) or (m,), got {tuple(t.shape)}")
                need(t.shape[-1], f"target shape {tuple(t.shape)}")
            elif kind == "SoftmaxCrossEntropy":
                t = self.array(spec, "labels", at, TARGET_DTYPES)
                if t.dtype.kind in "iu":
                    if t.ndim > 1:
                        self.fail(f"{at}.labels: integer labels must have shape (batch,) or (), got {tuple(t.shape)}")
                else:
                    if t.ndim not in (1, 2):
                        self.fail(f"{at}.labels must have shape (batch, m) or (m,), got {tuple(t.shape)}")
                    need(t.shape[-1], f"labels shape {tuple(t.shape)}")
            if kind in TERMINAL:
                n = 1
        return entering, n


def _is_count(s: Any) -> bool:
    return isinstance(s, int) and not isinstance(s, bool) and s >= 0


def _build(specs: list[dict], arrays: dict[str, np.ndarray], ns: Any, device: Any) -> list[Layer]:
    def arr(r: dict) -> Any:
        return from_numpy(ns, arrays[r["key"]], device=device)

    layers: list[Layer] = []
    for spec in specs:
        kind = spec["type"]
        if kind in PLAIN:
            layers.append(PLAIN[kind]())
        elif kind in HYPER:
            cls, attr = HYPER[kind]
            layers.append(cls(float(spec[attr])))
        elif kind == "Dense":
            layers.append(Dense(arr(spec["weight"]), None if spec["bias"] is None else arr(spec["bias"])))
        elif kind == "Residual":
            layers.append(Residual(*_build(spec["layers"], arrays, ns, device), h=float(spec["h"])))
        elif kind == "Sum":
            layers.append(Sum())
        elif kind == "MSELoss":
            layers.append(MSELoss(arr(spec["target"])))
        else:  # SoftmaxCrossEntropy (the checker allows nothing else)
            layers.append(SoftmaxCrossEntropy(arr(spec["labels"])))
    return layers


def _no_constants(name: str) -> float:
    raise ValueError(f"the architecture contains the non-standard JSON constant {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the architecture repeats the field {k!r}")
        out[k] = v
    return out


def load(path: str | os.PathLike | Any, *, xp: Any = None, device: Any = None) -> Sequential:
    """Read a model written by :func:`save`, onto the array library and device of your choice.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The ``.npz`` file.
    xp : module, optional
        The array library of the result: ``numpy`` (default), ``cupy``, ``jax.numpy``,
        ``torch``, ``array_api_strict``, ``dask.array`` or their ``array_api_compat``
        namespaces. Arrays keep the dtypes they were saved with.
    device : object, optional
        Passed as ``xp.asarray(..., device=device)`` when given.

    Returns
    -------
    Sequential
        A model computing the same outputs and derivatives as the saved one.

    Raises
    ------
    ValueError
        If the file holds pickled or object data (refused: nothing is ever unpickled), is not
        an ``.npz`` archive, or its architecture does not describe a valid model: unknown
        layer types or fields, bad hyper-parameters, missing or extra arrays, arrays whose
        shape or dtype differ from the description, inconsistent dense weight and bias shapes,
        or consecutive layers whose widths do not match. All of this is checked before any
        layer is built.
    TypeError
        If ``xp`` is not an array namespace.

    See Also
    --------
    save : the inverse.

    Examples
    --------
    >>> import io, numpy as np, torch, hessarray as ha
    >>> from hessarray.io import load, save
    >>> model = ha.Sequential(ha.Dense(np.eye(2)), ha.ELU(0.5), ha.MSELoss(np.ones(2)))
    >>> buffer = io.BytesIO()
    >>> save(model, buffer)
    >>> _ = buffer.seek(0)
    >>> loaded = load(buffer, xp=torch)
    >>> loaded[0].weight.dtype, loaded[1].alpha
    (torch.float64, 0.5)
    >>> float(loaded(torch.zeros(2, dtype=torch.float64)))
    1.0
    """
    ns = resolve_namespace(xp)
    name = os.fspath(path) if isinstance(path, str | os.PathLike) else getattr(path, "name", repr(path))

    def fail(message: str) -> NoReturn:
        raise ValueError(f"cannot load {name}: {message}")

    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            fail("it holds a single array, not an .npz archive written by hessarray.io.save")
        with data:
            arrays = {key: data[key] for key in data.files}
    except ValueError as exc:
        if str(exc).startswith(f"cannot load {name}: "):
            raise
        if "pickle" in str(exc):
            raise ValueError(
                f"cannot load {name}: it contains pickled (object) data, which is refused: "
                f"hessarray never unpickles files ({exc})"
            ) from None
        raise ValueError(f"cannot load {name}: not a valid .npz file ({exc})") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"cannot load {name}: not a valid .npz file ({type(exc).__name__}: {exc})") from None

    if ARCHITECTURE_KEY not in arrays:
        fail(f"no {ARCHITECTURE_KEY!r} entry; it was not written by hessarray.io.save")
    raw = arrays.pop(ARCHITECTURE_KEY)
    if raw.dtype.kind == "U" and raw.ndim == 0:
        text = str(raw[()])
    elif raw.dtype == np.uint8 and raw.ndim == 1:
        try:
            text = raw.tobytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            fail(f"{ARCHITECTURE_KEY!r} is not UTF-8 text ({exc})")
    else:
        fail(f"{ARCHITECTURE_KEY!r} must be a 0-d string or 1-d uint8 array, got dtype {raw.dtype}, shape {raw.shape}")
    try:
        architecture = json.loads(text, parse_constant=_no_constants, object_pairs_hook=_unique_keys)
    except ValueError as exc:
        fail(f"{ARCHITECTURE_KEY!r} is not valid JSON ({exc})")

    if not isinstance(architecture, dict):
        fail(f"the architecture must be a JSON object, got {type(architecture).__name__}")
    if architecture.get("format") != FORMAT:
        fail(f"the architecture's format is {architecture.get('format')!r}, expected {FORMAT!r}")
    if architecture.get("version") != VERSION:
        fail(f"unsupported format version {architecture.get('version')!r} (this hessarray reads version {VERSION})")
    if set(architecture) != {"format", "version", "layers"}:
        fail(f"unexpected top-level fields {sorted(set(architecture) - {'format', 'version', 'layers'})}")

    arrays = {k: v if v.dtype.isnative else v.astype(v.dtype.newbyteorder("=")) for k, v in arrays.items()}
    for key, a in arrays.items():
        if a.dtype.name not in TARGET_DTYPES:
            fail(f"array {key!r} has unsupported dtype {a.dtype}")
    checker = _Checker(arrays, fail)
    checker.chain(architecture["layers"], "layers", None, False)
    extra = sorted(set(arrays) - checker.used)
    if extra:
        fail(f"unexpected arrays {extra} that the architecture does not refer to")
    return Sequential(*_build(architecture["layers"], arrays, ns, device))
