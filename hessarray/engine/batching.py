"""Running a computation block by block over the batch, optionally on several threads.

On NumPy the blocks are independent, cache-sized pieces of work: running them on one thread
per core, each calling single-threaded BLAS, keeps every core busy with in-cache GEMMs *and*
elementwise work (BLAS's own threads help only the GEMMs, and spin-wait on small ones). NumPy
releases the GIL in both. BLAS threads are limited with ``threadpoolctl`` during the call,
when it is installed; without it the blocks run one after another.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

from ..layers.base import Layer

try:  # optional: limits BLAS threads while blocks run in parallel
    import threadpoolctl
except ImportError:  # pragma: no cover - exercised where threadpoolctl is absent
    threadpoolctl = None

_controller = None  # one ThreadpoolController: scanning the loaded libraries costs milliseconds


def _blas_single_thread() -> Any:
    """A context limiting BLAS to one thread (a null context without threadpoolctl)."""
    global _controller
    if threadpoolctl is None:
        return nullcontext()
    if _controller is None:
        _controller = threadpoolctl.ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_busy = threading.local()


def serial_blas() -> Any:
    """A context limiting BLAS to one thread for a caller's own small GEMMs, unless this
    thread already runs under the limit (in, or below, :func:`map_blocks`' parallel blocks)."""
    return nullcontext() if getattr(_busy, "active", False) else _blas_single_thread()


def default_workers() -> int:
    """Threads for block-parallel NumPy work: ``HESSARRAY_THREADS`` or the core count
    (1 without ``threadpoolctl``)."""
    env = os.environ.get("HESSARRAY_THREADS")
    if env:
        return max(1, int(env))
    if threadpoolctl is None:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _executor(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < workers:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hessarray")
        return _pool


def map_blocks(
    fn: Callable[..., tuple],
    layers: list[Layer],
    x: Any,
    plan: Any,
    combine: tuple[str, ...],
    xp: Any,
    *extra: Any,
) -> tuple:
    """Apply ``fn(layers, x_block, *extra_blocks)`` to blocks of ``chunk`` samples and
    combine the results. ``extra`` are more per-sample arrays, sliced like ``x``.

    ``combine[i]`` says how output ``i`` of the blocks is joined: ``"cat"`` along the batch
    axis, ``"sum"`` added up, ``"none"`` (the output is ``None``).
    """
    batch, chunk = x.shape[0], plan.chunk_size
    if chunk >= batch:
        return fn(layers, x, *extra)

    def run(start: int) -> tuple:
        stop = min(start + chunk, batch)
        block = [layer.batch_slice(start, stop) for layer in layers]
        return fn(block, x[start:stop, ...], *(a[start:stop, ...] for a in extra))

    def run_on_pool(start: int) -> tuple:
        # Only pool threads are marked: marking the caller's thread in a serial run would
        # keep every later call of that thread serial.
        _busy.active = True  # hessarray calls made from here (a model's function) stay serial
        return run(start)

    starts = range(0, batch, chunk)
    workers = min(plan.workers, len(starts))
    if workers > 1 and not getattr(_busy, "active", False):
        limit = _blas_single_thread()
        _busy.active = True  # nested calls (a model's function calling hessarray) stay serial
        try:
            with limit:
                parts = list(_executor(workers).map(run_on_pool, starts))
        finally:
            _busy.active = False
    else:
        parts = [run(start) for start in starts]
    out = []
    for i, how in enumerate(combine):
        items = [p[i] for p in parts]
        if how == "cat":
            out.append(xp.concat(items, axis=0))
        elif how == "sum":
            total = items[0]
            for item in items[1:]:
                total = total + item
            out.append(total)
        else:
            out.append(None)
    return tuple(out)


def run_shared(fn: Callable[[], Any], workers: int) -> None:
    """Call ``fn()`` on ``workers`` threads at once, the caller's and ``workers - 1`` of the
    pool, BLAS limited to one thread, and return when every call has returned.

    For work that the calls share out among themselves (tiles claimed from a shared counter,
    see :mod:`.tanh_mlp`): a core that is slowed down, or a thread that starts late, then takes
    fewer tiles instead of holding up the others. Below a pool thread (or with one worker)
    ``fn`` runs once, on this thread, with BLAS as the caller left it.
    """
    if workers <= 1 or getattr(_busy, "active", False):
        fn()
        return

    def run_on_pool() -> None:
        _busy.active = True
        fn()

    limit = _blas_single_thread()
    _busy.active = True
    try:
        with limit:
            futures = [_executor(workers).submit(run_on_pool) for _ in range(workers - 1)]
            try:
                fn()
            finally:
                for future in futures:
                    future.result()
    finally:
        _busy.active = False


def check_same_backend(x: Any, other: Any, name: str) -> None:
    """``TypeError`` unless ``other`` is an array of ``x``'s library on ``x``'s device."""
    from .._backend import check_inputs

    check_inputs(x, [(name, other)])
