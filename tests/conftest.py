"""Shared fixtures: one ``xp`` fixture over every array backend, and the Hypothesis profile.

Each backend is a :class:`Backend` helper with ``name``, ``xp`` (the array-API namespace of
its arrays), ``device``, ``asarray(numpy_array)`` (on the backend's device, dtype kept) and
``to_numpy(array)``. GPU backends skip cleanly when no GPU is usable.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# -- Hypothesis ---------------------------------------------------------------------------------
# Few examples by default (the whole suite must stay fast on two cores); raise with
# HESSARRAY_HYPOTHESIS_EXAMPLES=500 for a deeper search. No example database is written into
# the repository; failures print a reproduction blob instead.
settings.register_profile(
    "hessarray",
    deadline=None,
    max_examples=int(os.environ.get("HESSARRAY_HYPOTHESIS_EXAMPLES", "15")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    print_blob=True,
)
settings.load_profile("hessarray")


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


@pytest.fixture(params=BACKENDS, ids=BACKENDS)
def xp(request) -> Backend:
    return make_backend(request.param)
