"""Moving a model's arrays to another array library and device (:meth:`hessarray.Sequential.to`).

This is the one place that knows how arrays cross libraries: by DLPack (``xp.from_dlpack``)
where the two libraries share memory, through a host (NumPy) copy where they cannot (CuPy from
NumPy, NumPy from CUDA tensors, tensors that require gradients), and into Dask as single-chunk
arrays. Dtypes are kept. Nothing here runs in a derivative call.
"""

from __future__ import annotations

import warnings
from typing import Any

import array_api_compat
from array_api_compat import device

__all__ = ["library_name", "move_arrays", "target_device"]


def library_name(xp: Any) -> str:
    """How users import the library of namespace ``xp``: ``"numpy"``, ``"torch"``, ``"jax.numpy"``,
    ``"dask.array"``, ``"array_api_strict"``, ``"cupy"`` (``array_api_compat``'s wrappers named
    after the library they wrap)."""
    return str(getattr(xp, "__name__", xp)).removeprefix("array_api_compat.")


def valid_devices(ns: Any) -> list | None:
    """The devices ``ns`` lists (``__array_namespace_info__().devices()``), or ``None``."""
    try:
        with warnings.catch_warnings():  # torch warns about device types it probes
            warnings.simplefilter("ignore")
            return [d for d in ns.__array_namespace_info__().devices() if d is not None]
    except Exception:
        return None


def target_device(ns: Any, dev: Any) -> Any:
    """``dev`` as ``ns`` reports devices (``"cuda:0"`` -> ``torch.device("cuda", 0)``); ``None``
    gives the library's default device. ``ValueError`` naming the valid devices if ``ns`` does
    not accept ``dev``."""
    try:
        # The library itself decides what it accepts, and how it names the device.
        return device(ns.empty((0,)) if dev is None else ns.empty((0,), device=dev))
    except Exception as exc:
        valid = valid_devices(ns)
        listed = "" if valid is None else f"; valid devices are {', '.join(map(repr, valid))}"
        raise ValueError(
            f"{dev!r} is not a device of {library_name(ns)} ({type(exc).__name__}: {exc}){listed}"
        ) from None


def _dtype_name(dtype: Any) -> str:
    return str(dtype).rsplit(".", 1)[-1]  # float64, torch.float64, array_api_strict.float64


def _kept(before: str, after: str) -> bool:
    """Whether a dtype survived a move: floats exactly; integers may change width (JAX without
    64-bit mode holds class labels as ``int32``, which index just as well)."""
    return (
        after == before or not before.startswith("float") and after.rstrip("0123456789") == before.rstrip("0123456789")
    )


def _to_host(a: Any) -> Any:
    from .io import to_numpy  # io imports the model, which imports this module

    return to_numpy(a)


def _move_concrete(a: Any, ns: Any, dev: Any) -> Any:
    """``a`` as an array of ``ns`` on ``dev`` (``a`` is computed unless ``ns`` is Dask)."""
    from .convert import resolve_namespace  # convert imports the model, which imports this module

    if resolve_namespace(array_api_compat.array_namespace(a)) is ns:
        return a if device(a) == dev else array_api_compat.to_device(a, dev)
    if array_api_compat.is_dask_namespace(ns):
        import dask.array as da

        # NumPy and CuPy arrays become the chunk as they are; others go through the host.
        host = a if array_api_compat.is_numpy_array(a) or array_api_compat.is_cupy_array(a) else _to_host(a)
        return da.from_array(host, chunks=-1)
    try:
        out = ns.from_dlpack(a)  # shares memory where both sides can
    except Exception:  # another device, a read-only or autograd-tracked source, no DLPack
        return ns.asarray(_to_host(a), device=dev)
    return out if device(out) == dev else array_api_compat.to_device(out, dev)


def move_arrays(arrays: list[tuple[str, Any]], xp: Any, dev: Any = None) -> dict[str, Any]:
    """Each named array of ``arrays`` as an array of library ``xp`` on device ``dev``, by name.

    Parameters
    ----------
    arrays : list of (name, array)
        Arrays of any library (a model's :meth:`~hessarray.Sequential.arrays`).
    xp : module
        The target library or its array-API namespace (see
        :func:`hessarray.convert.resolve_namespace`).
    dev : object, optional
        A device of ``xp``; ``None`` is the library's default device.

    Returns
    -------
    dict
        The moved arrays, in the same dtypes (integers may change width where the library
        has no other, as JAX without 64-bit mode). They may share memory with the originals
        (DLPack, or the same array where nothing had to move).

    Raises
    ------
    TypeError
        If ``xp`` is not an array library or namespace.
    ValueError
        If ``dev`` is not a device of ``xp``, or ``xp`` cannot hold a floating dtype (JAX
        without 64-bit mode and a ``float64`` array).
    """
    from .convert import resolve_namespace

    ns = resolve_namespace(xp)
    dev = target_device(ns, dev)
    computed: dict[str, Any] = {}
    lazy = [(name, a) for name, a in arrays if array_api_compat.is_dask_array(a)]
    if lazy and not array_api_compat.is_dask_namespace(ns):
        # Only Dask keeps graphs (Dask to Dask computes nothing); every other library needs the
        # values: compute all graphs in one pass.
        import dask

        computed = dict(zip((n for n, _ in lazy), dask.compute(*(a for _, a in lazy))))
    out = {}
    for name, a in arrays:
        moved = _move_concrete(computed.get(name, a), ns, dev)
        if not _kept(_dtype_name(a.dtype), _dtype_name(moved.dtype)):
            hint = "; enable 64-bit mode: jax.config.update('jax_enable_x64', True)" if "jax" in ns.__name__ else ""
            raise ValueError(
                f"{library_name(ns)} turned {name} of dtype {_dtype_name(a.dtype)} "
                f"into {_dtype_name(moved.dtype)}{hint}"
            )
        out[name] = moved
    return out
