"""Memory budget of a call, and progress over its blocks.

A call's *working set* is what its blocks of samples hold while they run (caches, tangents,
adjoints, Hessian terms, each block's own results before they are written into the output);
the outputs themselves are not part of it. The plan (:mod:`.plan`) sizes the blocks so that
the blocks in flight stay within the budget: ``max_memory`` bytes when given, otherwise a
default found here, once per call and from the input's device only (never per block, never
from array values).

The defaults (their values in :mod:`hessarray.tuning`):

- :data:`~hessarray.tuning.DEVICE_SHARE` of the device's free memory, where the backend
  reports it (CuPy, torch on CUDA, JAX on an accelerator: under ``jax.jit``, the default
  device's);
- :data:`~hessarray.tuning.CPU_BYTES` on CPUs (NumPy, array-api-strict, torch CPU, JAX CPU);
- no budget on Dask: its own chunks bound the memory of each task.
"""

from __future__ import annotations

import operator
from contextlib import contextmanager, nullcontext
from typing import Any

import array_api_compat

from .._backend import array_namespace
from ..tuning import CPU_BYTES, DEVICE_SHARE


def _is_tracer(x: Any) -> bool:
    """Whether ``x`` is a JAX tracer (under ``jax.jit`` / ``jax.grad``): shapes only."""
    try:
        import jax
    except ImportError:  # pragma: no cover - JAX arrays need JAX
        return False
    return isinstance(x, jax.core.Tracer)


def itemsize(x: Any) -> int:
    """Bytes per element of the real floating array ``x`` (4 for float32, 8 for float64), from
    its dtype alone: works on every backend, tracers and lazy Dask arrays included."""
    return array_namespace(x).finfo(x.dtype).bits // 8


def device_free_memory(xp: Any, x: Any) -> int | None:
    """Free bytes on ``x``'s accelerator as its library reports them (its caching allocator's
    reusable memory included), or ``None`` on CPUs and on Dask.

    One driver query (no synchronization with the device's queue, no copy to the host).
    """
    if array_api_compat.is_cupy_namespace(xp):
        import cupy

        with cupy.cuda.Device(x.device.id):
            free, _ = cupy.cuda.runtime.memGetInfo()
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())
    if array_api_compat.is_torch_namespace(xp):
        if x.device.type != "cuda":
            return None
        import torch

        free, _ = torch.cuda.mem_get_info(x.device)
        cached = torch.cuda.memory_reserved(x.device) - torch.cuda.memory_allocated(x.device)
        return int(free) + int(cached)
    if array_api_compat.is_jax_namespace(xp):
        import jax

        # A tracer has no device; jit runs its computation on the default device.
        devices = jax.devices()[:1] if _is_tracer(x) else list(x.devices()) if hasattr(x, "devices") else []
        if len(devices) != 1 or devices[0].platform == "cpu":
            return None
        stats = devices[0].memory_stats() or {}
        if "bytes_limit" not in stats:
            return None
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return None


def default_budget(xp: Any, x: Any) -> int | None:
    """The working-set budget when ``max_memory`` is not given:
    :data:`~hessarray.tuning.DEVICE_SHARE` of the accelerator's free memory,
    :data:`~hessarray.tuning.CPU_BYTES` elsewhere, ``None`` (no limit) on Dask."""
    if array_api_compat.is_dask_namespace(xp):
        return None
    free = device_free_memory(xp, x)
    if free is None:
        return CPU_BYTES
    return max(1, int(free * DEVICE_SHARE))


def check_max_memory(max_memory: Any) -> int | None:
    """``max_memory`` as an int (``None`` stays ``None``), or ``ValueError``/``TypeError``."""
    if max_memory is None:
        return None
    try:
        if isinstance(max_memory, bool):
            raise TypeError
        max_memory = operator.index(max_memory)
    except TypeError:
        raise TypeError(f"max_memory must be an int (bytes) or None, got {type(max_memory).__name__}") from None
    if max_memory < 1:
        raise ValueError(f"max_memory must be a positive number of bytes, got {max_memory}")
    return int(max_memory)


def check_progress(progress: bool) -> None:
    """``ImportError`` naming what to install when ``progress=True`` and tqdm is missing."""
    if progress:
        _tqdm()


def _tqdm() -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        raise ImportError(
            "progress=True needs tqdm: install it with `pip install tqdm` (or `pip install hessarray[progress]`)"
        ) from None
    return tqdm


def progress_bar(progress: bool, blocks: int) -> Any:
    """A context giving a tqdm bar over ``blocks`` chunks when ``progress`` and the run is
    chunked (more than one block), else ``None``."""
    if not progress or blocks <= 1:
        return nullcontext(None)
    return _bar(_tqdm(), blocks)


@contextmanager
def _bar(tqdm: Any, blocks: int) -> Any:
    bar = tqdm(total=blocks, desc="hessarray", unit="chunk")
    try:
        yield bar
    finally:
        bar.close()
