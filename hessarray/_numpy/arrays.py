"""NumPy-only array helpers: views, cached constants and in-place updates that the array API
does not offer, for small blocks where each NumPy call's overhead shows.

Each function here takes NumPy arrays only; :mod:`hessarray._delegation` decides when they
apply and the portable modules never call them directly.
"""

from __future__ import annotations

from typing import Any

import numpy
from array_api_compat import is_numpy_namespace

from ..tuning import CONTIGUOUS_WEIGHT_SIZE, SPLIT_COLUMNS, SPLIT_K
from . import loops

#: NumPy >= 2.1 implements the 2023.12 standard in its main namespace: using it directly
#: skips array-api-compat's wrappers, which cost more than the work for small blocks.
NATIVE = getattr(numpy, "__array_api_version__", "") >= "2023.12"


def matmul_rows(xp: Any, a: Any, rows: int, w_t: Any) -> Any | None:
    """``a`` ``(..., n)`` times ``w_t`` ``(n, m)`` as one GEMM over ``rows`` rows, by the
    arrays' methods (no ``numpy.reshape`` dispatch); ``None`` unless ``xp`` is NumPy's
    namespace. (The check is here, not in :mod:`hessarray._delegation`: one call fewer on
    call-bound small blocks.)"""
    if not (xp is numpy or is_numpy_namespace(xp)):
        return None
    return (a.reshape(rows, a.shape[-1]) @ w_t).reshape(*a.shape[:-1], w_t.shape[-1])


def repeat_view(a: Any, axis: int, count: int) -> Any | None:
    """``a`` repeated ``count`` times along a new axis ``axis`` as a read-only view with
    stride 0 there, made directly (a third of ``numpy.broadcast_to``'s cost); ``None`` unless
    ``a`` is a C-contiguous ``numpy.ndarray``."""
    if type(a) is not numpy.ndarray or not a.flags.c_contiguous:
        return None
    shape = list(a.shape)
    shape.insert(axis, count)
    strides = list(a.strides)
    strides.insert(axis, 0)
    view = numpy.ndarray(shape, a.dtype, buffer=a, strides=strides)
    view.flags.writeable = False
    return view


_IDENTITIES: dict[tuple[int, Any], Any] = {}


def identity(n: int, dtype: Any) -> Any:
    """The ``(n, n)`` identity, made once per size and dtype and kept, read-only (small blocks
    spend a microsecond or two per ``eye`` otherwise, several times per call)."""
    key = (n, dtype)
    eye = _IDENTITIES.get(key)
    if eye is None:
        if len(_IDENTITIES) > 256:  # many sizes seen: start over rather than grow
            _IDENTITIES.clear()
        eye = numpy.eye(n, dtype=dtype)
        eye.flags.writeable = False
        _IDENTITIES[key] = eye
    return eye


def add_diagonal(a: Any, c: Any) -> Any | None:
    """``c`` ``(..., n)`` added into the diagonal of ``a`` ``(..., n, n)`` in place, through a
    strided view (two array operations fewer than building the diagonal matrix); returns
    ``a``, or ``None`` where ``a`` is not C-contiguous or the shapes differ."""
    if not (a.flags.c_contiguous and a.shape[:-1] == c.shape):
        return None
    n = c.shape[-1]
    flat = a.reshape(*a.shape[:-2], n * n)
    flat[..., :: n + 1] += c
    return a


def symmetrize(h: Any, owned: bool) -> Any:
    """``(h + hᵀ) / 2`` over the last two axes: in place in ``h`` when ``owned`` and the
    compiled loop applies, else on a copy (without numba: the transpose is added into the
    copy)."""
    if owned and loops.symmetrize(h):
        return h
    out = h.copy()  # always a copy (for n = 1 a transposed view is h's own memory)
    if not loops.symmetrize(out):
        out += numpy.swapaxes(h, -1, -2)
        out *= 0.5
    return out


def contract_split(left: Any, c: Any, right: Any) -> Any | None:
    """``Σ_r L[i] c R[j]`` ``(B, 1, k, k)`` for ``L is R`` ``(k, B, r)``, one output and
    ``c`` ``(B, 1, r)``, from :data:`~hessarray.tuning.SPLIT_K` directions in float32, else
    ``None``.

    The symmetric term ``tᵀ diag(c) t`` is formed as two per-sample products, the first
    :data:`~hessarray.tuning.SPLIT_COLUMNS` columns and the trailing block, and the rest
    mirrored: ``k·16 + (k-16)²`` instead of ``k²`` products per ``r``. In float64 OpenBLAS
    runs the narrower products slower and the split does not pay.
    """
    if not (left is right and c.shape[1] == 1 and left.shape[0] >= SPLIT_K and left.dtype == numpy.float32):
        return None
    t = left
    k, batch, r = t.shape
    k1 = SPLIT_COLUMNS
    lc = numpy.empty((batch, k, r), t.dtype)
    numpy.multiply(t.transpose(1, 0, 2), c, out=lc)  # sample-major t·c
    right = t.transpose(1, 2, 0)  # (B, r, k) views
    out = numpy.empty((batch, k, k), t.dtype)
    numpy.matmul(lc, right[:, :, :k1], out=out[:, :, :k1])
    numpy.matmul(lc[:, k1:], right[:, :, k1:], out=out[:, k1:, k1:])
    out[:, :k1, k1:] = out[:, k1:, :k1].transpose(0, 2, 1)
    return out.reshape(batch, 1, k, k)


def dense_forward(x: Any, w: Any, b: Any | None) -> tuple[Any, Any] | None:
    """``Dense.forward`` for a NumPy ``x`` and ``w`` of one dtype: ``(y, (x, w, Wᵀ))``, the
    bias added in place into the fresh product (small blocks are call-bound); ``None`` for
    other arrays (exact types: subclasses keep the portable path). The check is here, not in
    :mod:`hessarray._delegation`: one call fewer per layer.

    A small ``Wᵀ`` (:data:`~hessarray.tuning.CONTIGUOUS_WEIGHT_SIZE`) is copied contiguous,
    since OpenBLAS multiplies small matrices faster by a contiguous one; a large one stays a
    view (no copy per call).
    """
    if type(x) is not numpy.ndarray or type(w) is not numpy.ndarray or w.dtype != x.dtype:
        return None
    w_t = numpy.ascontiguousarray(w.T) if w.size <= CONTIGUOUS_WEIGHT_SIZE else w.T
    y = x @ w_t
    if b is not None:
        y += b if b.dtype == y.dtype else b.astype(y.dtype)
    return y, (x, w, w_t)
