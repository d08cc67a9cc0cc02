"""Namespace, device and dtype checks, and the few contraction helpers the layers share.

Everything here uses functions of the array API standard (2023.12) only, reached through
``array_api_compat``; nothing branches on array values or copies to the host.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
from array_api_compat import device, is_array_api_obj

from . import _delegation

_NAMESPACES: dict[type, Any] = {}


def array_namespace(*arrays: Any) -> Any:
    """``array_api_compat.array_namespace``, cached by array type (it depends on the type
    only); a backend may give its own main namespace where it implements the standard
    (:func:`hessarray._delegation.native_namespace`)."""
    if len(arrays) != 1:
        return array_api_compat.array_namespace(*arrays)
    kind = type(arrays[0])
    xp = _NAMESPACES.get(kind)
    if xp is None:
        xp = _delegation.native_namespace(array_api_compat.array_namespace(arrays[0]))
        _NAMESPACES[kind] = xp
    return xp


__all__ = [
    "array_namespace",
    "check_inputs",
    "describe",
    "device",
    "diag_embed",
    "identity",
    "add_diagonal",
    "symmetrize",
    "matmul_last",
    "is_array_api_obj",
    "repeat_view",
]


def describe(a: Any) -> str:
    """A short human description of an array: its type, dtype and device."""
    kind = f"{type(a).__module__}.{type(a).__qualname__}"
    try:
        where = device(a)
    except Exception:  # pragma: no cover - exotic objects
        where = "?"
    return f"{kind}(dtype={getattr(a, 'dtype', '?')}, device={where})"


def _move_hint(xp: Any) -> str:
    """How to bring a model to the library and device of an input of namespace ``xp``."""
    from ._transfer import library_name  # its name as users import it: torch, jax.numpy, ...

    return f"use model.to({library_name(xp)}, device=x.device) to move the model"


def check_inputs(x: Any, arrays: list[tuple[str, Any]]) -> Any:
    """Return the namespace shared by ``x`` and the model's arrays, or raise ``TypeError``.

    Parameters
    ----------
    x : array
        The user's input.
    arrays : list of (name, array)
        The model's arrays (weights, biases, targets), with names for the message.

    Returns
    -------
    namespace
        The array-API-compatible namespace of ``x``.
    """
    if not is_array_api_obj(x):
        raise TypeError(f"x must be an array, got {type(x).__name__}")
    xp = array_namespace(x)
    where = device(x)
    for name, a in arrays:
        try:
            other = array_namespace(a)
        except TypeError as exc:  # pragma: no cover - non-arrays are rejected by layers
            raise TypeError(f"{name} is not an array: {exc}") from None
        if other is not xp:
            raise TypeError(
                f"the model and its input live in different array libraries: "
                f"{name} is {describe(a)} but x is {describe(x)}; {_move_hint(xp)}"
            )
        other_where = device(a)
        # Under jax.jit a tracer has no device (None): nothing to compare.
        if where is not None and other_where is not None and other_where != where:
            raise TypeError(
                f"the model and its input live on different devices: "
                f"{name} is {describe(a)} but x is {describe(x)}; {_move_hint(xp)}"
            )
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"x must have a real floating dtype (float32 or float64), got {x.dtype}; "
            f"convert it with xp.astype(x, xp.float64)"
        )
    for name, a in arrays:
        if not xp.isdtype(a.dtype, ("real floating", "integral", "bool")):
            raise TypeError(f"{name} has unsupported dtype {a.dtype}")
    return xp


def matmul_last(xp: Any, a: Any, w_t: Any) -> Any:
    """Contract the last axis of ``a`` with the first of the 2-D ``w_t`` in one GEMM.

    ``a`` of shape ``(..., n)`` and ``w_t`` of shape ``(n, m)`` give ``(..., m)``. The leading
    axes are folded into the row count so that NumPy calls BLAS once instead of once per
    leading index (a 3-D @ 2-D matmul loops over the batch in NumPy); NumPy's product is
    made by the array's methods (:mod:`hessarray._delegation`).
    """
    if a.ndim == 2:
        return xp.matmul(a, w_t)
    lead = a.shape[:-1]
    rows = 1
    for s in lead:
        rows *= s
    if rows == 0:  # an empty batch (Dask cannot reshape empty arrays)
        return xp.zeros((*lead, w_t.shape[-1]), dtype=a.dtype, device=device(a))
    fast = _delegation.matmul_rows(xp, a, rows, w_t)
    if fast is not None:
        return fast
    out = xp.matmul(xp.reshape(a, (rows, a.shape[-1])), w_t)
    return xp.reshape(out, (*lead, w_t.shape[-1]))


def repeat_view(xp: Any, a: Any, axis: int, count: int) -> Any:
    """``a`` repeated ``count`` times along a new axis ``axis``: a read-only view, no copy.

    ``xp.broadcast_to`` of ``xp.expand_dims``; on NumPy, for a C-contiguous ``a``, the view
    is made directly (stride 0 on the new axis, :mod:`hessarray._delegation`), a third of
    ``numpy.broadcast_to``'s cost, which shows on small blocks.
    """
    view = _delegation.repeat_view(xp, a, axis, count)
    if view is not None:
        return view
    shape = list(a.shape)
    shape.insert(axis, count)
    return xp.broadcast_to(xp.expand_dims(a, axis=axis), tuple(shape))


def identity(xp: Any, n: int, like: Any) -> Any:
    """The ``(n, n)`` identity in ``like``'s dtype, on its device, for reading only.

    NumPy's are made once per size and dtype and kept, read-only (small blocks spend a
    microsecond or two per ``eye`` otherwise, several times per call); other libraries make
    a new one.
    """
    eye = _delegation.identity(xp, n, like)
    if eye is not None:
        return eye
    return xp.eye(n, dtype=like.dtype, device=device(like))


def diag_embed(xp: Any, c: Any) -> Any:
    """``(..., n) -> (..., n, n)`` with ``c`` on the diagonal (no integer-array assignment)."""
    return c[..., :, None] * identity(xp, c.shape[-1], c)


def add_diagonal(xp: Any, a: Any, c: Any, *, owned: bool = False) -> Any:
    """``a + diag_embed(c)`` for ``a`` of shape ``(..., n, n)`` and ``c`` of shape ``(..., n)``.

    ``owned=True`` says that ``a`` is a temporary of the caller's that nobody else holds:
    NumPy then adds ``c`` into its diagonal in place, through a strided view (two array
    operations fewer than building the ``(..., n, n)`` diagonal matrix, which is most of
    the cost for small blocks). Other backends, and ``owned=False``, build it.
    """
    if owned:
        done = _delegation.add_diagonal(xp, a, c)
        if done is not None:
            return done
    return a + diag_embed(xp, c)


def symmetrize(xp: Any, h: Any, *, owned: bool = False) -> Any:
    """``(h + hᵀ) / 2`` over the last two axes: exactly symmetric Hessians.

    ``owned=True`` says that ``h`` is a temporary of the caller's that nobody else holds: on
    NumPy it is then symmetrized in place by a compiled loop (:mod:`hessarray._delegation`),
    when that applies; otherwise it runs on a copy (without numba: the transpose is added
    into the copy).
    """
    fast = _delegation.symmetrize(xp, h, owned)
    if fast is not None:
        return fast
    return 0.5 * (h + xp.matrix_transpose(h))


def is_lazy(xp: Any) -> bool:
    """Whether the namespace builds graphs (Dask): those keep their own chunking."""
    return array_api_compat.is_dask_namespace(xp)


def is_eager_cpu(xp: Any, x: Any) -> bool:
    """Whether ``x`` is computed eagerly on a CPU (NumPy, array-api-strict, torch CPU): there,
    blocks of samples that fit in cache are faster than one large block (which backends:
    :func:`hessarray._delegation.eager_cpu`)."""
    return _delegation.eager_cpu(xp, x)
