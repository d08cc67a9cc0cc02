"""Dask input: one task per batch chunk, each running the in-memory engine on its chunk.

A public function given a Dask array ``x`` does not build a graph of per-layer operations:
it calls itself on every batch chunk of ``x`` inside one task (``dask.array.blockwise``),
so each task runs NumPy's (or CuPy's) compiled and blocked executors on concrete arrays.

- The model enters the graph once: one key holds it, rebuilt (:meth:`Sequential.map_arrays`)
  from a skeleton and its arrays. NumPy or CuPy arrays go into that key; Dask arrays stay
  lazy and are dependencies of it (computed to one concrete array each). Per-sample targets
  (a loss's targets with a batch axis) are instead chunked like ``x`` and passed to each task
  with its chunk.
- Per-sample results keep ``x``'s batch chunks. Results summed over the batch are a tree
  reduction of the chunks' partial sums (one partial per chunk, stacked on a new axis and
  summed ``SPLIT_EVERY`` at a time).
- Shapes, dtypes and the array type of the chunks come from one call on a one-sample probe
  of zeros (of the model's shapes), which also raises the in-memory call's errors at once.

Public functions reach this module by one line, the :func:`dask_aware` decorator.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
import threading
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import array_api_compat
import numpy

from ._backend import array_namespace, check_inputs, describe
from .engine import batching
from .model import Sequential
from .tuning import SPLIT_EVERY

__all__ = ["SPLIT_EVERY", "dask_aware"]

# Whether a call keeps its batch axis, from its arguments (only those the caller gave).
_KINDS: dict[str, Callable[[dict], bool]] = {
    "per_sample": lambda args: True,
    "summed": lambda args: False,
    # per sample with respect to x, summed with respect to a parameter unless per_sample=True
    "wrt": lambda args: args.get("wrt") is None or bool(args.get("per_sample", False)),
    "flag": lambda args: bool(args.get("per_sample", False)),
    "operator": lambda args: False,
}


def dask_aware(kind: str, batched: tuple[str, ...] = (), product: Callable | None = None) -> Callable:
    """Decorator: a public function ``fn(model, x, ...)`` given a Dask ``x`` runs one task per
    batch chunk of ``x``, each calling ``fn`` on its chunk; other input goes straight to ``fn``.

    Parameters
    ----------
    kind : {"per_sample", "summed", "wrt", "flag", "operator"}
        Whether the results keep the batch axis: always, never, unless ``wrt`` is given without
        ``per_sample=True``, or only with ``per_sample=True``. ``"operator"``: ``fn`` returns a
        matrix-free operator whose products are ``product(model, x, v, **options)`` (a
        ``"summed"`` function), returned as a :class:`hessarray.parameters.DaskParameterOperator`.
    batched : tuple of str
        Names of further per-sample array arguments (rows matching ``x``'s), chunked like ``x``.
    product : callable, optional
        For ``kind="operator"``.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            x = args[1] if len(args) > 1 else kwargs.get("x")
            if array_api_compat.is_dask_array(x):
                return _dispatch(wrapper, signature, kind, batched, product, args, kwargs)
            return fn(*args, **kwargs)

        return wrapper

    return decorate


# -- running a call on Dask input ---------------------------------------------------------------
def _dispatch(fn, signature, kind, batched, product, args, kwargs) -> Any:
    import dask
    import dask.array as da

    arguments = dict(signature.bind(*args, **kwargs).arguments)
    model, x = arguments.pop("model"), arguments.pop("x")
    # Each task would draw a bar of its own chunks: Dask's own progress reporting covers a run.
    arguments.pop("progress", None)
    if not isinstance(model, Sequential):
        raise TypeError(f"model must be a hessarray.Sequential, got {type(model).__name__}")
    meta = x._meta
    _check_libraries(model, x, meta)
    if x.ndim not in (1, 2):
        raise ValueError(f"x must have shape (batch, d) or (d,), got shape {tuple(x.shape)}")
    single = x.ndim == 1
    x2 = x[None, :] if single else x
    if x2.numblocks[1] > 1:
        warnings.warn(
            f"x is chunked along its feature axis ({x2.numblocks[1]} chunks of {x2.chunks[1]}); hessarray "
            f"rechunks it to one chunk (x.rechunk({{1: -1}})) since every sample needs all of its features",
            UserWarning,
            stacklevel=3,
        )
        x2 = x2.rechunk({1: -1})
    batch, d = x2.shape
    rows = x2.chunks[0]
    # The model's arrays: per-sample ones (their batch_slice differs) are chunked like x,
    # the others go into the one key that holds the model.
    sliced = _first_sample(model)
    whole = dict(model.arrays())
    matched = [n for n, a in whole.items() if sliced[n] is not a] + [n for n in batched if n in arguments]
    if matched and any(math.isnan(r) for r in rows):
        raise ValueError(
            f"x has unknown chunk sizes along its batch axis (chunks {rows}), but {', '.join(matched)} must be "
            f"split like its rows: call x.compute_chunk_sizes() first"
        )
    for layer in model.layers:
        layer.check_batch(batch)
    model.output_width(d)
    if kind == "operator":
        from .parameters import DaskParameterOperator  # parameters imports this module

        return DaskParameterOperator(fn, product, model, x, arguments)
    per_sample = _KINDS[kind](arguments)

    # Per-sample arguments (hvp's v): Dask arrays of x's library, chunked like x.
    extra_batched = {}
    for name in batched:
        if name not in arguments:
            continue
        v = arguments.pop(name)
        if not array_api_compat.is_dask_array(v):
            raise TypeError(
                f"{name} is {describe(v)} but x is {describe(x)}: pass {name} as a Dask array too, chunked like x"
            )
        check_inputs(meta, [(name, v._meta)])
        # x's shape, or x's shape and one more axis (k vectors per sample), as hvp checks it
        if tuple(v.shape[: x.ndim]) != tuple(x.shape) or v.ndim > x.ndim + 1:
            want = f"{tuple(x.shape)} or {tuple(x.shape) + ('k',)}"
            raise ValueError(
                f"{name} must have shape {want} to match x of shape {tuple(x.shape)}, got {tuple(v.shape)}"
            )
        v = v[None, ...] if single else v
        extra_batched[name] = _chunked_like(v, rows)

    per_sample_arrays = {n: _chunked_like(da.asarray(a), rows) for n, a in whole.items() if sliced[n] is not a}
    shared = {n: a for n, a in whole.items() if n not in per_sample_arrays}
    skeleton = model.map_arrays(lambda n, a: _placeholder(da, a))
    prepared = dask.delayed(_prepare, pure=True)(skeleton, shared, arguments)

    # One call on a one-sample probe: the results' structure, shapes, dtypes and chunk type.
    xp = array_namespace(meta)
    probe_args = _tree_map(lambda a: _zeros_for_dask(xp, a), arguments)
    probe_args.update({n: _zeros_for_dask(xp, v[:1, ...]) for n, v in extra_batched.items()})
    found = fn(*one_sample_probe(model, x2, sliced), **probe_args)
    leaves = _leaves(found)

    names = tuple(per_sample_arrays) + tuple(extra_batched)
    inputs: list[Any] = [x2, ("b", "f")]
    for k, a in enumerate(list(per_sample_arrays.values()) + list(extra_batched.values())):
        inputs += [a, ("b",) + tuple(f"a{k}.{j}" for j in range(1, a.ndim))]
    how = "leaf" if len(leaves) == 1 and leaves[0][0] == () else "tree"
    how = how if per_sample else how + "-partial"
    token = f"hessarray-{getattr(fn, '__name__', 'call')}"
    task_args = (_run_chunk, fn, None, prepared, None, len(per_sample_arrays), None, names, None, how, None)

    def assemble(leaf: Any, source: list, token: str = token) -> Any:
        """The Dask array of one result from the probe's ``leaf``: per sample, the chunks'
        blocks; summed, the sum of the chunks' partials (stacked on a new first axis).
        ``source``: the blockwise function and its arguments."""
        shift = 0 if per_sample else 1  # the probe's batch axis of 1, or the partials' axis
        ndim = leaf.ndim + shift
        new = {f"n{j}": leaf.shape[j - shift] for j in range(1, ndim)}
        out_ind = ("b",) + tuple(new)
        arr = da.blockwise(
            *source[:1],
            out_ind,
            *source[1:],
            new_axes=new,
            adjust_chunks=None if per_sample else {"b": 1},
            concatenate=False,
            meta=_meta_like(leaf, ndim),
            token=token,
        )
        return arr if per_sample else arr.sum(axis=0, split_every=SPLIT_EVERY, dtype=leaf.dtype)

    if how.startswith("leaf"):
        out = assemble(found, [*task_args, *inputs])
        return out[0, ...] if single and per_sample else out
    # Several results: each task returns all of its chunk's, picked apart by light tasks.
    tuples = da.blockwise(
        *task_args[:1],
        ("b",),
        *task_args[1:],
        *inputs,
        concatenate=False,
        meta=numpy.empty((0,), dtype=object),
        token=token,
    )
    results = {}
    for path, leaf in leaves:
        if leaf is None:
            results[path] = None
            continue
        arr = assemble(leaf, [_pick, tuples, ("b",), path, None, per_sample, None], token + "-part")
        results[path] = arr[0, ...] if single and per_sample else arr
    return _rebuild(found, results)


def _first_sample(model: Sequential) -> dict[str, Any]:
    """The model's arrays for its first sample (per-sample targets sliced to one row), by name."""
    return dict(Sequential(*(layer.batch_slice(0, 1) for layer in model.layers)).arrays())


def _zeros_for_dask(xp: Any, a: Any) -> Any:
    """Zeros of ``xp`` (the chunks' library) in place of a Dask array ``a``; others as they are."""
    return xp.zeros(a.shape, dtype=a.dtype) if array_api_compat.is_dask_array(a) else a


def one_sample_probe(model: Sequential, x: Any, sliced: dict[str, Any] | None = None) -> tuple[Sequential, Any]:
    """The concrete one-sample call a Dask call is first run on: ``model`` sliced to its first
    sample with zeros for its Dask arrays, and a ``(1, d)`` sample of zeros, both in the
    library of ``x``'s chunks. ``sliced`` is :func:`_first_sample` of ``model`` if known."""
    xp = array_namespace(x._meta)
    sliced = _first_sample(model) if sliced is None else sliced
    probe = model.map_arrays(lambda n, a: _zeros_for_dask(xp, sliced[n]))
    return probe, xp.zeros((1, x.shape[-1]), dtype=x.dtype)


def _check_libraries(model: Sequential, x: Any, meta: Any) -> None:
    """``TypeError`` unless the model's arrays are all Dask arrays of ``x``'s chunk type, or all
    arrays of that type (NumPy for NumPy chunks, CuPy for CuPy chunks)."""
    arrays = model.arrays()
    lazy = [array_api_compat.is_dask_array(a) for _, a in arrays]
    if any(lazy) and not all(lazy):
        name, a = arrays[lazy.index(False)]
        other, b = arrays[lazy.index(True)]
        raise TypeError(
            f"the model mixes array libraries: {name} is {describe(a)} but {other} is {describe(b)}; "
            f"move the model to one library, e.g. model.to(dask.array) or model.to(numpy)"
        )
    chunk_type = type(meta).__name__
    for name, a in arrays:
        kind = a._meta if array_api_compat.is_dask_array(a) else a
        try:
            check_inputs(meta, [(name, kind)])
        except TypeError:
            raise TypeError(
                f"the model and its input live in different array libraries: {name} is {describe(a)} but x is "
                f"{describe(x)} with {chunk_type} chunks; use a model of {chunk_type} or Dask arrays, e.g. "
                f"model.to({type(meta).__module__.split('.')[0]})"
            ) from None
    check_inputs(meta, [])  # x's dtype


def _chunked_like(a: Any, rows: tuple) -> Any:
    """``a`` with ``x``'s batch chunks along its first axis and one chunk along the others."""
    return a.rechunk((rows,) + tuple(-1 for _ in range(1, a.ndim)))


def _placeholder(da: Any, a: Any) -> Any:
    """A stand-in of ``a``'s shape and dtype for the model's skeleton: a one-task Dask array
    (small to pickle), named by shape and dtype (no hashing)."""
    shape = "x".join(str(s) for s in a.shape)
    return da.empty(a.shape, dtype=a.dtype, chunks=-1, name=f"hessarray-placeholder-{shape}-{a.dtype}")


def _meta_like(leaf: Any, ndim: int) -> Any:
    from dask.array.utils import meta_from_array

    return meta_from_array(leaf, ndim=ndim)


def _prepare(skeleton: Sequential, shared: dict, arguments: dict) -> tuple[Sequential, dict]:
    """The task behind the model's key: the model rebuilt on its concrete arrays (per-sample
    ones stay placeholders until a chunk's task fills them), and the call's other arguments."""
    return skeleton.map_arrays(lambda n, a: shared.get(n, a)), arguments


def _one(block: Any) -> Any:
    """A block of a one-chunk (contracted) axis comes as nested one-element lists."""
    while isinstance(block, list):
        block = block[0]
    return block


def _run_chunk(fn, prepared, n_model, names, how, x_block, *blocks) -> Any:
    """One task: ``fn`` on one batch chunk, with the model's per-sample arrays for the chunk."""
    model, arguments = prepared
    blocks = [_one(b) for b in blocks]
    if n_model:
        mine = dict(zip(names[:n_model], blocks[:n_model]))
        model = model.map_arrays(lambda n, a: mine.get(n, a))
    kwargs = dict(arguments)
    kwargs.update(zip(names[n_model:], blocks[n_model:]))
    with task_threads():
        out = fn(model, _one(x_block), **kwargs)
    return out[None, ...] if how == "leaf-partial" else out


def _pick(tree: Any, path: tuple, per_sample: bool) -> Any:
    for key in path:
        tree = tree[key]
    return tree if per_sample else tree[None, ...]


# -- thread use inside a task ------------------------------------------------------------------------
#: How a task's in-memory call uses threads: ``True``, on the task's own thread only;
#: ``False``, also on hessarray's thread pool (one thread per core, ``HESSARRAY_THREADS``);
#: ``None`` (default), on its own thread where Dask already runs at least as many tasks at
#: once as there are cores (the local threaded scheduler, a worker with one thread per core),
#: else with the pool (a worker with fewer threads than cores), and as ``HESSARRAY_THREADS``
#: says when it is set.
SERIAL_TASKS: bool | None = None


def _serial() -> bool:
    """Whether the task running on this thread should keep to it (see :data:`SERIAL_TASKS`)."""
    if SERIAL_TASKS is not None:
        return SERIAL_TASKS
    if os.environ.get("HESSARRAY_THREADS"):
        return False
    slots = _worker_threads()
    return slots is None or slots >= batching.default_workers()


def _worker_threads() -> int | None:
    """Threads of the ``distributed`` worker running this task; ``None`` outside one (Dask's
    local schedulers run one task per core at once)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except ValueError:
        return None
    return worker.state.nthreads


_blas_lock = threading.Lock()
_blas_users = 0  # tasks of this process inside task_threads()
_blas_limit: Any = None


@contextmanager
def task_threads():
    """Inside a Dask task, where :func:`_serial` says so: hessarray's block-parallel paths run
    on this thread alone (as when called from one of hessarray's own pool threads), and BLAS
    on one thread.

    The BLAS limit is process-wide (``threadpoolctl``): it is taken by the first task of the
    process to enter and given back by the last to leave, so that tasks running at once on
    several threads (Dask's threaded scheduler) neither undo it for each other nor leave it
    behind. Dask's worker processes start with one BLAS thread already.
    """
    global _blas_users, _blas_limit
    if not _serial():
        yield
        return
    state = batching._busy
    before = getattr(state, "active", False)
    with _blas_lock:
        if _blas_users == 0:
            _blas_limit = batching.serial_blas()
            _blas_limit.__enter__()
        _blas_users += 1
    state.active = True
    try:
        yield
    finally:
        state.active = before
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limit.__exit__(None, None, None)
                _blas_limit = None


# -- result trees ----------------------------------------------------------------------------------
def _leaves(tree: Any, path: tuple = ()) -> list[tuple[tuple, Any]]:
    """``(path, array or None)`` for each leaf of a result: an array, a (named) tuple or a dict."""
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in _leaves(value, path + (key,))]
    if isinstance(tree, tuple | list):
        return [item for i, value in enumerate(tree) for item in _leaves(value, path + (i,))]
    return [(path, tree)]


def _rebuild(tree: Any, values: dict, path: tuple = ()) -> Any:
    if isinstance(tree, dict):
        return {key: _rebuild(value, values, path + (key,)) for key, value in tree.items()}
    if isinstance(tree, tuple | list):
        items = [_rebuild(value, values, path + (i,)) for i, value in enumerate(tree)]
        if hasattr(tree, "_fields"):  # NamedTuple (Derivatives)
            return type(tree)(*items)
        return type(tree)(items)
    return values[path]


def _tree_map(fn: Callable, tree: Any) -> Any:
    return _rebuild(tree, {path: fn(leaf) for path, leaf in _leaves(tree)})
