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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import array_api_compat

from .. import _delegation
from .._backend import device, is_eager_cpu
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
    progress: Any = None,
) -> tuple:
    """Apply ``fn(layers, x_block, *extra_blocks)`` to blocks of ``chunk`` samples and
    combine the results. ``extra`` are more per-sample arrays, sliced like ``x``.

    ``combine[i]`` says how output ``i`` of the blocks is joined: ``"cat"`` along the batch
    axis, ``"sum"`` added up (in block order), ``"none"`` (the output is ``None``).

    At most ``plan.workers`` blocks are in flight at once, and each block's ``"cat"``
    results are written into an output allocated once (:class:`Joined`) as soon as the
    block finishes, so that the blocks' working sets and the outputs are held, not the
    outputs twice. ``progress``: a bar (tqdm's ``update``) advanced as blocks finish, in
    block order and on the calling thread.
    """
    before_run(xp, x)
    batch, chunk = x.shape[0], plan.chunk_size
    if chunk >= batch:
        found = fn(layers, x, *extra)
        if progress is not None:
            progress.update(1)
        return found

    def run(start: int) -> tuple:
        stop = min(start + chunk, batch)
        block = [layer.batch_slice(start, stop) for layer in layers]
        found = fn(block, x[start:stop, ...], *(a[start:stop, ...] for a in extra))
        joined.put(start, stop, found)
        return tuple(None if how == "cat" else a for a, how in zip(found, combine))

    def run_on_pool(start: int) -> tuple:
        # Only pool threads are marked: marking the caller's thread in a serial run would
        # keep every later call of that thread serial.
        _busy.active = True  # hessarray calls made from here (a model's function) stay serial
        return run(start)

    joined = Joined(xp, batch, combine)
    starts = range(0, batch, chunk)
    workers = min(plan.workers, len(starts))
    sums: list[Any] = [None] * len(combine)

    def add(found: tuple) -> None:
        """Take a finished block's sums, on the calling thread (a bar is not thread-safe)."""
        for i, how in enumerate(combine):
            if how == "sum":
                sums[i] = found[i] if sums[i] is None else sums[i] + found[i]
        if progress is not None:
            progress.update(1)

    if workers > 1 and not getattr(_busy, "active", False):
        limit = _blas_single_thread()
        _busy.active = True  # nested calls (a model's function calling hessarray) stay serial
        try:
            with limit:
                pool = _executor(workers)
                pending: deque = deque()
                for start in starts:  # in order, at most ``workers`` blocks in flight
                    if len(pending) == workers:
                        add(pending.popleft().result())
                    pending.append(pool.submit(run_on_pool, start))
                while pending:
                    add(pending.popleft().result())
        finally:
            _busy.active = False
    else:
        for start in starts:
            add(run(start))
    return tuple(joined.result(i) if how == "cat" else sums[i] for i, how in enumerate(combine))


def before_run(xp: Any, x: Any) -> None:
    """Process settings a computation on a CPU needs, made when one first runs (never by
    planning): glibc keeps freed memory for NumPy's temporaries (:mod:`hessarray._numpy.allocator`)."""
    if is_eager_cpu(xp, x):
        _delegation.keep_freed_memory()


def writes_in_place(xp: Any, like: Any) -> bool:
    """Whether blocks can be written into an output allocated by hessarray (slice assignment):
    NumPy, CuPy, array-api-strict and torch tensors outside autograd; not JAX (immutable),
    Dask (lazy: its graph joins blocks itself) or torch tensors that autograd tracks."""
    if array_api_compat.is_jax_namespace(xp) or array_api_compat.is_dask_namespace(xp):
        return False
    if array_api_compat.is_torch_namespace(xp):
        import torch

        functorch = getattr(torch._C, "_functorch", None)
        wrapped = functorch is not None and functorch.is_functorch_wrapped_tensor(like)
        return not (like.requires_grad or wrapped)
    return array_api_compat.is_writeable_array(like)


class Joined:
    """Blocks' ``"cat"`` results joined along the batch axis as they arrive.

    Where the backend allows (:func:`writes_in_place`), the output of each ``"cat"`` result is
    allocated when the first block arrives and every block is copied into its rows, so the
    parts are freed as they come; elsewhere the parts are kept and concatenated at the end.
    Safe to call from several threads (the blocks' rows are disjoint).
    """

    def __init__(self, xp: Any, batch: int, combine: tuple[str, ...]) -> None:
        self.xp, self.batch, self.combine = xp, batch, combine
        self.out: list[Any] = [None] * len(combine)
        self.parts: list[list] = [[] for _ in combine]
        self.lock = threading.Lock()

    def put(self, start: int, stop: int, found: tuple) -> None:
        for i, how in enumerate(self.combine):
            if how != "cat":
                continue
            part = found[i]
            with self.lock:
                if self.out[i] is None and not self.parts[i]:
                    if writes_in_place(self.xp, part):
                        shape = (self.batch, *part.shape[1:])
                        self.out[i] = self.xp.empty(shape, dtype=part.dtype, device=device(part))
                out = self.out[i]
                if out is None:
                    self.parts[i].append((start, part))
            if out is not None:
                out[start:stop, ...] = part

    def result(self, i: int) -> Any:
        if self.out[i] is not None:
            return self.out[i]
        parts = [part for _, part in sorted(self.parts[i], key=lambda p: p[0])]
        return self.xp.concat(parts, axis=0)


def run_shared(fn: Callable[[], Any], workers: int) -> None:
    """Call ``fn()`` on ``workers`` threads at once, the caller's and ``workers - 1`` of the
    pool, BLAS limited to one thread, and return when every call has returned.

    For work that the calls share out among themselves (tiles claimed from a shared counter,
    see :mod:`hessarray._numpy.network`): a core that is slowed down, or a thread that starts late, then takes
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
