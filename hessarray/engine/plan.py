"""Planning, kept apart from execution: which mode, how many samples per block.

The plan is made from shapes alone (layer widths, ``d``, ``m``, the batch size and the
backend), never from array values, so it is the same under ``jax.jit`` and on Dask.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from .. import _delegation
from .._backend import is_eager_cpu
from ..layers.base import Layer
from ..tuning import BLOCK_BYTES, MIN_BLOCK, MIN_SPLIT, REDUCED_BYTES, REVERSE_ADVANTAGE, WORKING_SET_QUARTERS
from . import budget, executors
from .batching import default_workers

MODES = ("auto", "forward", "reverse")


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
        Samples per block: the batch runs block by block (one block when it is the batch
        size). For an executor with a ``tile``, samples per call (the whole batch unless the
        memory budget, or :data:`hessarray.tuning.REDUCED_BYTES` for a diagonal or trace,
        splits it), each call sharing its tiles among the threads.
    flops : dict
        Estimated multiply-adds per sample of each mode.
    workers : int
        Threads the blocks run on (NumPy only; see :mod:`hessarray.engine.batching`).
    max_memory : int or None
        The working-set budget in bytes the blocks were sized for: the caller's
        ``max_memory``, or the default (:mod:`hessarray.engine.budget`); ``None``: no limit
        (Dask, whose own chunks bound each task).
    working_set : int
        Estimated bytes the blocks in flight hold at most, besides the outputs (within
        ``max_memory``, unless one sample alone needs more under the default budget).
    executor : str
        The executor that runs (:data:`hessarray.engine.executors.REGISTRY`): ``"portable"``,
        the array-API passes block by block on every backend, or ``"numpy-compiled"``, NumPy's
        compiled whole-network kernels (a tanh MLP or a residual tanh network) where they apply.
    tile : int or None
        Samples per tile of an executor that runs tiles of its own (``"numpy-compiled"``),
        shared out among the ``workers`` threads; ``None`` for the portable executor.
    """

    mode: str
    chunk_size: int
    flops: dict[str, float] = field(default_factory=dict)
    workers: int = 1
    max_memory: int | None = None
    working_set: int = 0
    executor: str = "portable"
    tile: int | None = None

    def blocks(self, batch: int) -> int:
        """Blocks (or compiled calls) ``batch`` samples run in: a progress bar's length."""
        return -(-batch // self.chunk_size)


def pick_mode(flops: dict[str, float]) -> str:
    """The mode ``"auto"`` runs for these per-sample FLOP estimates: the forward mode unless
    the reverse mode's estimate is :data:`hessarray.tuning.REVERSE_ADVANTAGE` times smaller.
    Where a dense layer narrows a wide input first, the forward mode's seeds live in the
    narrow space and the two estimates stay close; where a curved layer meets the wide input
    itself, the reverse mode's estimate is several times smaller and it runs."""
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
    part: str = "full",
    directions: int | None = None,
    max_memory: int | None = None,
    block_bytes: int = 0,
    sample_bytes: int = 0,
    executor: str = "portable",
) -> Plan:
    """Choose the mode (by the FLOP estimates when ``mode="auto"``, :func:`pick_mode`) and
    the block size.

    ``batch`` samples enter ``layers`` with width ``d``; ``x`` (the user's input) tells only
    the backend, device and dtype. The block size keeps the blocks in flight within
    ``max_memory`` bytes (default: :func:`.budget.default_budget`), by the working set that
    :func:`working_set` estimates for what is formed: the Hessian's ``part`` (``"full"``,
    ``"diag"``, ``"trace"``, or ``"hvp"`` with ``directions`` vectors), plus ``block_bytes``
    per block (sums over the batch, formed whatever the block size) and ``sample_bytes`` per
    sample. ``executor``: ``"auto"`` names the first executor of
    :data:`.executors.REGISTRY` that applies and whose sizes fit ``max_memory`` (the caller
    then runs that one); an executor's name: that one where it applies, else the portable one
    (``"portable"``, the default, for computations only the portable passes serve).

    Pure: it reads shapes, dtypes and the device's free memory, and changes nothing.

    Raises
    ------
    MemoryError
        When ``max_memory`` is smaller than one sample's working set (the message gives the
        minimum).
    """
    check_mode(mode)
    max_memory = budget.check_max_memory(max_memory)
    settings = (mode, chunk_size, hessian, part, directions, max_memory, block_bytes, sample_bytes, executor)
    backend_key = _delegation.plan_key(x)
    if backend_key is not None:
        # NumPy calls on small batches are call-bound: the plan is remembered per chain,
        # shape, dtype and settings (it depends on nothing else there: its default budget
        # is fixed).
        key = (batch, d, *settings, *backend_key)
        return remembered(_PLANS, layers, key, lambda: _make_plan(layers, batch, d, x, xp, *settings))
    return _make_plan(layers, batch, d, x, xp, *settings)


def _make_plan(
    layers: list[Layer],
    batch: int,
    d: int,
    x: Any,
    xp: Any,
    mode: str,
    chunk_size: int | None,
    hessian: bool,
    part: str,
    directions: int | None,
    max_memory: int | None,
    block_bytes: int,
    sample_bytes: int,
    executor: str,
) -> Plan:
    flops, m, widest = estimate(layers, d, hessian)
    flops = dict(flops)
    if mode == "auto":
        mode = pick_mode(flops)
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    item = budget.itemsize(x)
    limit = max_memory if max_memory is not None else budget.default_budget(xp, x)
    workers = default_workers() if _delegation.threaded_blocks(xp) else 1
    if executor != "auto" and executor not in executors.REGISTRY:
        raise ValueError(f"executor must be 'auto' or one of {tuple(executors.REGISTRY)}, got {executor!r}")
    asked = part if hessian else "jacobian"
    portable = executors.REGISTRY["portable"]
    for candidate in executors.REGISTRY.values() if executor == "auto" else (executors.REGISTRY[executor],):
        if candidate.tile is not None and candidate.applies(layers, x, asked, mode):
            sizes = (batch, d, item, asked, chunk_size, max_memory, limit, flops, workers, directions)
            planned = _tiled_plan(candidate, layers, *sizes)
            if planned is not None:
                return planned
    # The portable executor, block by block.
    eager_cpu = is_eager_cpu(xp, x)
    per_block, per_sample = portable.memory(layers, d, asked, mode, directions, item)
    per_block, per_sample = block_bytes + per_block, sample_bytes + per_sample
    if chunk_size is not None:
        chunk = int(chunk_size)
    elif eager_cpu:
        if mode == "forward":
            cache_bytes = item * widest * (1 + d + m + m * d)
        else:
            cache_bytes = item * widest * (1 + m + m * widest)
        chunk = max(MIN_BLOCK, BLOCK_BYTES // max(cache_bytes, 1))
    else:  # GPUs, XLA and Dask schedule large blocks themselves
        chunk = max(batch, 1)
    if limit is not None:
        need = per_block + per_sample
        if max_memory is not None and max_memory < need:
            raise MemoryError(
                f"max_memory={max_memory} bytes is too small: one sample needs at least {need} bytes "
                f"(block of 1 sample: {per_sample} bytes, plus {per_block} bytes per block); "
                f"raise max_memory to at least {need}"
            )
        # Each thread holds one block: fewer threads where the budget holds fewer blocks.
        workers = max(1, min(workers, limit // need))
        chunk = min(chunk, max(1, (limit // workers - per_block) // per_sample))
    if chunk_size is None and eager_cpu:
        chunk = balanced_chunk(batch, chunk, workers)
    chunk = max(1, min(chunk, max(batch, 1)))
    blocks = -(-max(batch, 1) // chunk)
    in_flight = min(workers, blocks)
    return Plan(mode, chunk, flops, workers, limit, in_flight * (per_block + chunk * per_sample), portable.name)


def _tiled_plan(
    executor: Any, layers, batch, d, item, part, chunk_size, max_memory, limit, flops, workers, directions
) -> Plan | None:
    """The plan of an executor that runs tiles of its own (NumPy's compiled whole-network
    kernels): chunks of the batch run one after another, each call sharing its tiles among the
    threads (as many as the budget holds). ``None`` where one thread and one sample exceed an
    explicit ``max_memory``. What a call holds besides its outputs: the executor's
    :meth:`~.executors.Executor.memory`.
    """
    tile = executor.tile_rows(layers, d, item)
    per_thread, per_sample = executor.memory(layers, d, part, "forward", directions, item)
    chunk = max(batch, 1) if chunk_size is None else int(chunk_size)
    if limit is not None:
        if max_memory is not None and max_memory < per_thread + per_sample:
            return None  # the portable passes, whose blocks can be smaller, may fit the budget
        # Each thread holds its own tile buffers: fewer threads where the budget holds fewer
        # (with a tile of samples each), as the portable plan runs fewer blocks at once.
        workers = max(1, min(workers, limit // (per_thread + tile * per_sample)))
    per_block = workers * per_thread
    if limit is not None and per_sample:
        fit = max(1, (limit - per_block) // per_sample)
        if fit < chunk:  # whole tiles per call where the budget allows
            chunk = fit // tile * tile if fit >= tile else fit
    if chunk_size is None and part in ("diag", "trace") and per_sample:
        # Only a diagonal or trace returned: calls of whole tiles (the tiles, and so the
        # results, of the whole batch's call) whose temporaries stay within REDUCED_BYTES.
        chunk = min(chunk, max(workers * tile, REDUCED_BYTES // per_sample // tile * tile))
    chunk = max(1, min(chunk, max(batch, 1)))
    return Plan("forward", chunk, flops, workers, limit, per_block + chunk * per_sample, executor.name, tile)


def working_set(layers: list[Layer], d: int, mode: str, hessian: bool, part: str, directions: int | None) -> int:
    """Array elements one sample holds at most while a block of the portable passes runs
    (its own results included), from the layer widths alone (remembered per chain).

    An upper estimate: every layer's caches (4 per unit) and adjoints (``m`` per unit), the
    tangents in flight, the Hessian term being formed and the accumulated one (each counted
    four times: term, sum, symmetrized copy, map back from reduced seeds), and the block's
    results. Checked against tracemalloc's peak in ``tests/test_memory_budget.py``.
    """
    key = (d, mode, hessian, part, directions)
    return remembered(_WORKING, layers, key, lambda: _working_set(layers, d, mode, hessian, part, directions))


_WORKING: dict[tuple, tuple] = {}


def _working_set(layers: list[Layer], d: int, mode: str, hessian: bool, part: str, directions: int | None) -> int:
    widths = [d]
    seeded = None  # the width where per-sample tangents start (the first layer with curvature)
    for layer in layers:
        if seeded is None and not layer.affine:
            seeded = widths[-1]
        widths.append(layer.out_width(widths[-1]))
    m, widest, units = widths[-1], max(widths), sum(widths)
    caches = 4 * units
    k = min(d, seeded if seeded is not None else d)  # seeds in the narrower space (forward_mode)
    if not hessian:  # the Jacobian: k tangents forward or m adjoints back
        return WORKING_SET_QUARTERS * (caches + 3 * (k if mode == "forward" else m) * widest + m * (1 + d)) // 4
    adjoints = m * units
    if part == "hvp":  # k directions forward, their second-order adjoints back
        k = d if directions is None else directions
        found = caches + adjoints + 3 * (1 + m) * k * units + 4 * m * d * k + m * (1 + d) + k * d
        return WORKING_SET_QUARTERS * found // 4
    results = m * (1 + d + {"full": d * d, "diag": d, "trace": 1}[part])
    if mode == "reverse":
        return WORKING_SET_QUARTERS * (caches + adjoints + 4 * m * widest * widest + results) // 4
    if k < d:  # the (k, k) Hessian formed in full, then mapped back to d
        term = 4 * m * k * k + m * {"full": k * d + d * d, "diag": k * d, "trace": k * k}[part]
    else:
        term = 4 * m * {"full": d * d, "diag": d, "trace": 1}[part]
    return WORKING_SET_QUARTERS * (caches + adjoints + (3 + 2 * m) * k * widest + term + results) // 4


def balanced_chunk(batch: int, chunk: int, workers: int) -> int:
    """The block size nearest ``chunk`` from below that splits ``batch`` into a multiple of
    ``workers`` blocks of equal size (the last one may be smaller by a few samples).

    With few blocks an uneven split idles a core: 10 000 samples in blocks of 2048 are five
    blocks, three on one thread and two on the other, where six blocks of 1667 keep both busy.
    """
    blocks = -(-batch // max(chunk, 1))
    if blocks == 1:  # one block would leave the other cores idle: split when worth a thread
        blocks = max(1, min(workers, batch // MIN_SPLIT))
    blocks = -(-blocks // workers) * workers if blocks > 1 else 1
    return max(1, -(-batch // blocks))
