"""Array backends for the tests (helper module, not tests).

Each backend is a :class:`Backend` helper with ``name``, ``xp`` (the array-API namespace of
its arrays), ``device``, ``asarray(numpy_array)`` (on the backend's device, dtype kept) and
``to_numpy(array)``. GPU backends call ``pytest.skip`` when no GPU is usable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import pytest


# -- backends -----------------------------------------------------------------------------------
@dataclass
class Backend:
    """A small handle on one array library (and device) for the tests."""

    name: str
    xp: Any
    device: Any
    _asarray: Callable[[np.ndarray], Any]
    _to_numpy: Callable[[Any], np.ndarray]
    #: whether results are lazy graphs (Dask) that must be computed to be read
    lazy: bool = False
    #: whether the backend runs on a GPU
    gpu: bool = False

    def asarray(self, a: Any) -> Any:
        """A NumPy array (or anything ``np.asarray`` takes) as this backend's array; dtype kept."""
        return self._asarray(np.asarray(a))

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(self._to_numpy(a))

    def device_of(self, a: Any) -> Any:
        return array_api_compat.device(a)

    def __repr__(self) -> str:
        return f"Backend({self.name})"


def _strict(device_name: str | None) -> Backend:
    import array_api_strict

    # Only functions of the 2023.12 standard, as the library promises.
    array_api_strict.set_array_api_strict_flags(api_version="2023.12")
    cpu = array_api_strict.Device("CPU_DEVICE")
    dev = cpu if device_name is None else array_api_strict.Device(device_name)

    def to_numpy(a):
        return np.asarray(a.to_device(cpu) if a.device != cpu else a)

    name = "array_api_strict" if device_name is None else f"array_api_strict:{device_name}"
    return Backend(name, array_api_strict, dev, lambda a: array_api_strict.asarray(a, device=dev), to_numpy)


def _numpy() -> Backend:
    return Backend("numpy", array_api_compat.array_namespace(np.zeros(1)), "cpu", np.array, np.asarray)


def _torch(cuda: bool) -> Backend:
    import torch

    if cuda:
        try:
            if not torch.cuda.is_available():
                raise RuntimeError("torch.cuda.is_available() is False")
            dev = torch.device("cuda", 0)
            torch.zeros(1, device=dev)
        except Exception as exc:
            pytest.skip(f"torch:cuda unavailable: {exc}")
    else:
        dev = torch.device("cpu")

    def asarray(a):
        return torch.asarray(a.copy(), device=dev)

    def to_numpy(a):
        return a.detach().cpu().numpy()

    xp = array_api_compat.array_namespace(torch.zeros(1, device=dev))
    return Backend("torch:cuda" if cuda else "torch", xp, dev, asarray, to_numpy, gpu=cuda)


def _jax(gpu: bool) -> Backend:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    if gpu:
        try:
            dev = jax.devices("gpu")[0]
        except Exception as exc:
            pytest.skip(f"jax:cuda unavailable: {exc}")
    else:
        dev = jax.devices("cpu")[0]

    def asarray(a):
        return jax.device_put(jnp.asarray(a), dev)

    xp = array_api_compat.array_namespace(asarray(np.zeros(1)))
    return Backend("jax:cuda" if gpu else "jax", xp, dev, asarray, np.asarray, gpu=gpu)


#: Dask chunk length along every axis: small, so that every computation spans several chunks.
DASK_CHUNK = 3


def _dask() -> Backend:
    import dask.array as da

    def asarray(a):
        return da.from_array(a, chunks=DASK_CHUNK if a.ndim else ())

    def to_numpy(a):
        return a.compute() if isinstance(a, da.Array) else a

    xp = array_api_compat.array_namespace(da.zeros(1))
    return Backend("dask", xp, "cpu", asarray, to_numpy, lazy=True)


def _cupy() -> Backend:
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
        cupy.zeros(1)
        dev = cupy.cuda.Device(0)
    except Exception as exc:  # ImportError, CUDARuntimeError (no driver), ...
        pytest.skip(f"cupy unavailable: {exc}")
    xp = array_api_compat.array_namespace(cupy.zeros(1))
    return Backend("cupy", xp, dev, lambda a: cupy.asarray(a), lambda a: cupy.asnumpy(a), gpu=True)


FACTORIES: dict[str, Callable[[], Backend]] = {
    "array_api_strict": lambda: _strict(None),
    "array_api_strict:device1": lambda: _strict("device1"),
    "numpy": _numpy,
    "torch": lambda: _torch(False),
    "jax": lambda: _jax(False),
    "dask": _dask,
    "cupy": _cupy,
    "torch:cuda": lambda: _torch(True),
    "jax:cuda": lambda: _jax(True),
}
BACKENDS = list(FACTORIES)
CPU_BACKENDS = [name for name in BACKENDS if ":cuda" not in name and name != "cupy"]


def make_backend(name: str) -> Backend:
    """The backend ``name`` (``pytest.skip`` when it is not usable here)."""
    return FACTORIES[name]()


def materialize(backend: Backend, results: Any) -> Any:
    """``results`` (an array or nested tuples/lists/dicts of them) as NumPy arrays.

    Lazy backends compute everything in one ``dask.compute`` call.
    """
    if backend.lazy:
        import dask

        (results,) = dask.compute(results)
    return _map(lambda a: None if a is None else backend.to_numpy(a), results)


def _map(fn, tree):
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    if hasattr(tree, "_fields"):  # NamedTuple (hessarray.Derivatives)
        return type(tree)(*(_map(fn, v) for v in tree))
    if isinstance(tree, list | tuple):
        return type(tree)(_map(fn, v) for v in tree)
    return fn(tree)


def leaves(tree) -> list:
    """The arrays in a nested tuple/list/dict (``None`` skipped)."""
    out: list = []
    _map(lambda a: out.append(a) if a is not None else None, tree)
    return out


def same_kind(result: Any, x: Any) -> bool:
    """Whether ``result`` is an array of the same library as ``x`` (NumPy scalars count as
    NumPy arrays: NumPy itself returns them for 0-d reductions)."""
    if isinstance(x, np.ndarray):
        return isinstance(result, np.ndarray | np.generic)
    return type(result) is type(x)


#: Backends where each new array shape costs a compilation (eager JAX compiles every
#: operation for every shape) or each operation builds a task graph (Dask). Long
#: parametrized tests run a representative subset of their cases there (see
#: :func:`backend_cases`) to keep the suite within a few minutes.
SLOW = frozenset({"jax", "dask", "jax:cuda"})


def backend_cases(cases, slow_cases) -> list:
    """``pytest.param(backend, case)`` for every backend and case, except that the backends
    in :data:`SLOW` get only ``slow_cases``. Use with
    ``@pytest.mark.parametrize("xp,case", backend_cases(...), indirect=["xp"])``."""
    slow_cases = list(slow_cases)
    missing = [c for c in slow_cases if c not in cases]
    assert not missing, f"unknown cases {missing}"
    return [pytest.param(b, c, id=f"{b}-{c}") for b in BACKENDS for c in cases if b not in SLOW or c in slow_cases]
