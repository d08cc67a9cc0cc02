"""Shared helpers of the asv benchmarks: backends, synchronisation, random problems.

Backends (the ``backend`` parameter of every benchmark):

``numpy``
    NumPy on the CPU.
``torch``
    PyTorch on the CPU.
``jax``
    JAX on the CPU; every call is compiled with ``jax.jit`` (the arrays are passed as
    arguments) and finished with ``block_until_ready``.
``cupy``
    CuPy on the current CUDA device; skipped without a GPU.
``torch:cuda``
    PyTorch on the first CUDA device; skipped without one.
``jax:cuda``
    JAX (compiled, as ``jax``) on the first GPU device; skipped without one.

A backend that is not installed, or has no device here, makes ``setup`` raise
``NotImplementedError``: asv then reports the benchmark as skipped (``n/a``), not failed.
Timed functions on GPUs synchronise the device before they return.

Executors (the ``executor`` parameter of the NumPy benchmarks): ``numpy-compiled`` (NumPy's
compiled whole-network kernels, where the plan picks them) and ``portable`` (the array-API
passes, forced with :func:`set_compiled`). Activations (the ``activation`` parameter):
:data:`ACTIVATIONS`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

try:
    import hessarray as ha
except ImportError:
    # The "existing" environment benchmarks the checkout itself when hessarray is not
    # installed; a virtualenv built by asv must have it installed.
    if os.environ.get("ASV_ENV_TYPE", "existing") != "existing":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import hessarray as ha

#: The last three run on a GPU (``asv_bench/gpu_check.sh`` runs those; skipped without one).
BACKENDS = ["numpy", "torch", "jax", "cupy", "torch:cuda", "jax:cuda"]
#: What ``ha.plan(model, x).executor`` may name on NumPy.
EXECUTORS = ["numpy-compiled", "portable"]
#: The activations of the models, each one hessarray layer.
ACTIVATIONS = {"tanh": ha.Tanh, "sin": ha.Sin, "softplus": ha.Softplus, "silu": ha.SiLU, "sigmoid": ha.Sigmoid}
#: The modules whose ``ENABLED`` lets NumPy's compiled executor run.
FLAG_MODULES = ("hessarray._numpy",)

# Import the optional libraries once, up front: with asv's "forkserver" launch method (set in
# asv.conf.json) every benchmark process is forked from one that has them loaded already,
# which saves seconds of imports per benchmark. Nothing is initialised here (no device, no
# thread pool), so forking stays safe.
for _name in ("torch", "jax", "jax.numpy"):
    try:
        __import__(_name)
    except ImportError:
        pass


class Backend:
    """One array library on one device: conversion, compilation and synchronisation."""

    name: str = "numpy"
    gpu: bool = False

    def asarray(self, a: np.ndarray) -> Any:
        return a

    def jit(self, fn: Callable) -> Callable:
        """``fn`` compiled for this backend (unchanged where there is nothing to compile)."""
        return fn

    def sync(self, result: Any) -> Any:
        """Wait until ``result`` (an array or a nest of tuples/lists of them) is computed."""
        return result

    def reset_peak(self) -> None:
        raise NotImplementedError("no device memory to track on the CPU")

    def peak_bytes(self) -> int:
        raise NotImplementedError("no device memory to track on the CPU")


class NumpyBackend(Backend):
    name = "numpy"

    def asarray(self, a):
        return np.asarray(a)


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, cuda: bool = False) -> None:
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        if cuda and not torch.cuda.is_available():
            raise NotImplementedError("torch has no CUDA device here")
        self.torch = torch
        self.gpu = cuda
        self.name = "torch:cuda" if cuda else "torch"
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")

    def asarray(self, a):
        return self.torch.asarray(np.ascontiguousarray(a), device=self.device)

    def sync(self, result):
        if self.gpu:
            self.torch.cuda.synchronize()
        return result

    def reset_peak(self):
        if not self.gpu:
            raise NotImplementedError("torch runs on the CPU here")
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()

    def peak_bytes(self):
        return int(self.torch.cuda.max_memory_allocated())


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, gpu: bool = False) -> None:
        try:
            import jax
            import jax.numpy as jnp
        except ImportError:
            raise NotImplementedError("jax is not installed") from None
        jax.config.update("jax_enable_x64", True)
        try:
            self.dev = jax.devices("gpu" if gpu else "cpu")[0]
        except RuntimeError as exc:  # no GPU backend (CPU-only jaxlib, or no device)
            raise NotImplementedError(f"jax has no {'GPU' if gpu else 'CPU'} device here: {exc}") from None
        self.jax, self.jnp = jax, jnp
        self.gpu = gpu
        self.name = "jax:cuda" if gpu else "jax"

    def asarray(self, a):
        return self.jax.device_put(self.jnp.asarray(a), self.dev)

    def jit(self, fn):
        return self.jax.jit(fn)

    def sync(self, result):
        return self.jax.block_until_ready(result)

    def reset_peak(self):
        if not self.gpu or not self.dev.memory_stats():
            raise NotImplementedError("no device memory statistics for JAX here")
        # JAX has no reset: the peak is reported since the start of the process.

    def peak_bytes(self):
        return int(self.dev.memory_stats().get("peak_bytes_in_use", 0))


class CupyBackend(Backend):
    name = "cupy"
    gpu = True

    def __init__(self) -> None:
        try:
            import cupy
        except ImportError:
            raise NotImplementedError("cupy is not installed") from None
        try:
            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise NotImplementedError("no CUDA device")
        except Exception as exc:  # CUDARuntimeError without a driver or device
            raise NotImplementedError(f"cupy has no usable GPU: {exc}") from None
        self.cupy = cupy

    def asarray(self, a):
        return self.cupy.asarray(a)

    def sync(self, result):
        self.cupy.cuda.get_current_stream().synchronize()
        return result

    def reset_peak(self):
        self.sync(None)
        self.cupy.get_default_memory_pool().free_all_blocks()
        self._base = self.cupy.get_default_memory_pool().total_bytes()

    def peak_bytes(self):
        # The default pool keeps every block it allocated: its total after the call is the peak
        # the call needed (free_all_blocks before the call started from an empty pool).
        return int(self.cupy.get_default_memory_pool().total_bytes() - self._base)


_BACKENDS = {
    "numpy": NumpyBackend,
    "torch": TorchBackend,
    "jax": JaxBackend,
    "cupy": CupyBackend,
    "torch:cuda": lambda: TorchBackend(cuda=True),
    "jax:cuda": lambda: JaxBackend(gpu=True),
}


def get_backend(name: str) -> Backend:
    """The backend, or ``NotImplementedError`` (asv: skipped) when it cannot run here."""
    return _BACKENDS[name]()


# -- problems -------------------------------------------------------------------------------------


def mlp_arrays(d: int, width: int, out: int = 1, depth: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights (``W0``, ``b0``, ...) of ``d → width (tanh) → ... → out``, float64."""
    rng = np.random.default_rng(seed)
    dims = [d] + [width] * depth + [out]
    arrays = {}
    for i in range(len(dims) - 1):
        arrays[f"W{i}"] = rng.standard_normal((dims[i + 1], dims[i])) / np.sqrt(dims[i])
        arrays[f"b{i}"] = 0.1 * rng.standard_normal(dims[i + 1])
    return arrays


def mlp_model(arrays: dict[str, Any], scalar: bool = True, activation: str = "tanh") -> ha.Sequential:
    """``Dense, act, ..., Dense`` (+ ``Sum`` when ``scalar``) from :func:`mlp_arrays`' arrays;
    ``act`` is ``activation`` (a key of :data:`ACTIVATIONS`)."""
    n = len(arrays) // 2
    layers: list = []
    for i in range(n):
        layers.append(ha.Dense(arrays[f"W{i}"], arrays[f"b{i}"]))
        if i < n - 1:
            layers.append(ACTIVATIONS[activation]())
    if scalar:
        layers.append(ha.Sum())
    return ha.Sequential(*layers)


def resnet_model(arrays: dict[str, Any], activation: str = "tanh", h: float = 0.5) -> ha.Sequential:
    """The residual network of :func:`mlp_arrays`' arrays (the same number of activations as
    :func:`mlp_model`'s): ``Dense d→w, act, Residual(Dense w→w, act, h) × (depth-1), Dense w→1, Sum``."""
    n = len(arrays) // 2
    act = ACTIVATIONS[activation]
    layers: list = [ha.Dense(arrays["W0"], arrays["b0"]), act()]
    for i in range(1, n - 1):
        layers.append(ha.Residual(ha.Dense(arrays[f"W{i}"], arrays[f"b{i}"]), act(), h=h))
    layers += [ha.Dense(arrays[f"W{n - 1}"], arrays[f"b{n - 1}"]), ha.Sum()]
    return ha.Sequential(*layers)


def compiled_flags() -> dict[str, bool]:
    """``ENABLED`` of each of :data:`FLAG_MODULES` that exists here."""
    import importlib

    flags = {}
    for name in FLAG_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "ENABLED"):
            flags[name] = bool(module.ENABLED)
    return flags


def set_compiled(flags: bool | dict[str, bool]) -> dict[str, bool]:
    """Set ``ENABLED`` of every flag module (``False`` forces the portable executor on NumPy;
    a dict from :func:`compiled_flags` restores each as it was); returns the old flags."""
    import importlib

    old = compiled_flags()
    for name in old:
        importlib.import_module(name).ENABLED = flags.get(name, old[name]) if isinstance(flags, dict) else bool(flags)
    return old


class Call:
    """``fn(model, x)`` ready to call on ``backend``: arrays converted once, compiled where
    the backend compiles (JAX: the model is rebuilt from traced arrays inside ``jax.jit``)."""

    def __init__(self, backend: Backend, arrays: dict[str, np.ndarray], build: Callable, fn: Callable) -> None:
        self.backend = backend
        self.arrays = {k: backend.asarray(v) for k, v in arrays.items()}
        if isinstance(backend, JaxBackend):
            jitted = backend.jit(lambda arrays, x: fn(build(arrays), x))
            self._run = lambda x: jitted(self.arrays, x)
        else:
            model = build(self.arrays)
            self._run = lambda x: fn(model, x)

    def __call__(self, x: Any) -> Any:
        return self.backend.sync(self._run(x))


def random_input(backend: Backend, shape: tuple[int, ...], seed: int = 1) -> Any:
    return backend.asarray(np.random.default_rng(seed).standard_normal(shape))
