"""Planning, kept apart from execution: which mode, how many samples per block.

The plan is made from shapes alone (layer widths, ``d``, ``m``, the batch size and the
backend), never from array values, so it is the same under ``jax.jit`` and on Dask.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any

import array_api_compat
import numpy

from .._allocator import keep_freed_memory
from .._backend import is_eager_cpu
from ..layers.base import Layer
from .batching import default_workers

MODES = ("auto", "forward", "reverse")

#: Bytes of working state per block on CPU (as estimated in :func:`_make_plan`). With freed
#: memory kept for reuse (:mod:`hessarray._allocator`), blocks of 3-6 MiB ran fastest here
#: (PINN-like: 1024 samples 1.2× faster than 341; d=50: 64 samples 1.3× faster than 20;
#: d=50 float64 with 100 samples 5 % faster than 60); much larger blocks fall out of cache
#: (10 000 samples at once: 1.5-2× slower). The block size is then evened out over the
#: threads (:func:`balanced_chunk`).
BLOCK_BYTES = 6 << 20


@dataclass(frozen=True)
class Plan:
    """How the derivatives of one call are computed.

    Attributes
    ----------
    mode : {"forward", "reverse"}
        ``"forward"``: tangents pushed forward, adjoints pulled back, each layer's curvature
        added as ``Tᵀ diag(c) T`` (cost ``O(L n² d + L n d²)`` per sample, for ``d ≤ n``).
        ``"reverse"``: adjoints and Hessians pulled back (``O(L n³)``, for ``d > n``).
    chunk_size : int
        Samples per block; the batch is processed block by block.
    flops : dict
        Estimated multiply-adds per sample of each mode.
    workers : int
        Threads the blocks run on (NumPy only; see :mod:`hessarray.engine.batching`).
    """

    mode: str
    chunk_size: int
    flops: dict[str, float] = field(default_factory=dict)
    workers: int = 1


#: ``mode="auto"`` takes the reverse mode only when its FLOP estimate is this many times
#: smaller than the forward mode's. Where a dense layer narrows a wide input first, the forward
#: mode's seeds live in the narrow space and the two estimates stay within 12 % of each other
#: (MLPs of width 16-256, d up to 1000). There the forward mode, GEMMs over all samples,
#: measured as fast as the reverse mode or faster (by up to 11 %; never slower by more than
#: 2 %) in three runs of the mode grid (docs/benchmarks.md). Where a curved layer meets the
#: wide input itself, the reverse mode's estimate is several times smaller and it runs.
REVERSE_ADVANTAGE = 1.15


def pick_mode(flops: dict[str, float]) -> str:
    """The mode ``"auto"`` runs for these per-sample FLOP estimates (see
    :data:`REVERSE_ADVANTAGE`)."""
    return "forward" if flops["forward"] <= REVERSE_ADVANTAGE * flops["reverse"] else "reverse"


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def remembered(cache: dict, layers: list[Layer], key: tuple, compute: Any) -> Any:
    """``compute()``, remembered in ``cache`` per chain of layers and ``key``.

    Layers are immutable, and the cache holds them through weak references, so it keeps no
    model alive and a new layer that reuses a freed one's ``id`` is not mistaken for it.
    """
    full = (tuple(map(id, layers)), *key)
    hit = cache.get(full)
    if hit is not None and all(r() is layer for r, layer in zip(hit[0], layers)):
        return hit[1]
    result = compute()
    if len(cache) > 256:
        cache.clear()
    cache[full] = (tuple(weakref.ref(layer) for layer in layers), result)
    return result


_ESTIMATES: dict[tuple, tuple] = {}
_PLANS: dict[tuple, tuple] = {}


def estimate(layers: list[Layer], d: int, hessian: bool) -> tuple[dict[str, float], int, int]:
    """Per-sample multiply-adds of each mode, the output width ``m`` and the widest layer
    (remembered per chain: a plan is made on every call)."""
    return remembered(_ESTIMATES, layers, (d, hessian), lambda: _estimate(layers, d, hessian))


def _estimate(layers: list[Layer], d: int, hessian: bool) -> tuple[dict[str, float], int, int]:
    n, widest, fwd, rev, one = d, d, 0.0, 0.0, 0.0
    widths = [d]
    for layer in layers:
        widths.append(layer.out_width(widths[-1]))
    m = widths[-1]
    k, shared = d, True  # forward tangents; shared by all samples while the layers are affine
    for layer, n in zip(layers, widths):
        if shared and not layer.affine:
            shared = False
            if n < d:  # seeds in the narrower space, and S H Sᵀ (and J Sᵀ) at the end
                k = n
                fwd += m * (n * n * d + n * d * d + n * d)
        # Tangents shared by all samples cost nothing per sample: only the value and adjoints.
        f, r = layer.flops(n, 0 if shared else k, m)
        fwd, rev = fwd + f, rev + r
        one += layer.flops(n, 0, 0)[0]
        widest = max(widest, n)
    if not hessian:  # Jacobian only: d tangents forward or m adjoints back
        fwd, rev = (1 + d) * one, (1 + m) * one
    return {"forward": fwd, "reverse": rev}, m, widest


def make_plan(
    layers: list[Layer],
    batch: int,
    d: int,
    x: Any,
    xp: Any,
    *,
    mode: str = "auto",
    chunk_size: int | None = None,
    hessian: bool = True,
) -> Plan:
    """Choose the mode (by the FLOP estimates when ``mode="auto"``, :func:`pick_mode`) and
    the block size.

    ``batch`` samples enter ``layers`` with width ``d``; ``x`` (the user's input) tells only
    the backend, device and dtype.
    """
    check_mode(mode)
    if type(x) is numpy.ndarray:
        # NumPy calls on small batches are call-bound: the plan is remembered per chain,
        # shape, dtype and settings (it depends on nothing else there).
        key = (batch, d, x.dtype, mode, chunk_size, hessian, os.environ.get("HESSARRAY_THREADS"))
        return remembered(_PLANS, layers, key, lambda: _make_plan(layers, batch, d, x, xp, mode, chunk_size, hessian))
    return _make_plan(layers, batch, d, x, xp, mode, chunk_size, hessian)


def _make_plan(
    layers: list[Layer], batch: int, d: int, x: Any, xp: Any, mode: str, chunk_size: int | None, hessian: bool
) -> Plan:
    flops, m, widest = estimate(layers, d, hessian)
    flops = dict(flops)
    if mode == "auto":
        mode = pick_mode(flops)
    eager_cpu = is_eager_cpu(xp, x)
    if eager_cpu:
        keep_freed_memory()  # NumPy's temporaries would otherwise fault in fresh pages
    if chunk_size is not None:
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        chunk = int(chunk_size)
    elif eager_cpu:
        item = 4 if x.dtype == xp.float32 else 8
        if mode == "forward":
            per_sample = item * widest * (1 + d + m + m * d)
        else:
            per_sample = item * widest * (1 + m + m * widest)
        chunk = max(16, BLOCK_BYTES // max(per_sample, 1))
    else:  # GPUs, XLA and Dask schedule large blocks themselves
        chunk = max(batch, 1)
    workers = default_workers() if array_api_compat.is_numpy_namespace(xp) or xp is numpy else 1
    if chunk_size is None and eager_cpu:
        chunk = balanced_chunk(batch, chunk, workers)
    return Plan(mode, max(1, min(chunk, max(batch, 1))), flops, workers)


def balanced_chunk(batch: int, chunk: int, workers: int) -> int:
    """The block size nearest ``chunk`` from below that splits ``batch`` into a multiple of
    ``workers`` blocks of equal size (the last one may be smaller by a few samples).

    With few blocks an uneven split idles a core: 10 000 samples in blocks of 2048 are five
    blocks, three on one thread and two on the other (PINN-like float32: 33 ms; six blocks of
    1667: 29.6 ms).
    """
    blocks = -(-batch // max(chunk, 1))
    if blocks == 1:  # one block would leave the other cores idle: split when worth a thread
        blocks = max(1, min(workers, batch // MIN_SPLIT))
    blocks = -(-blocks // workers) * workers if blocks > 1 else 1
    return max(1, -(-batch // blocks))


#: Fewest samples per block worth handing to another thread when the batch fits in one block.
MIN_SPLIT = 64
