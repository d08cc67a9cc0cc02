"""The one place where portable code hands work to a backend's own fast path.

As in array-api-extra's ``_delegation.py``: each function here checks the namespace or the
array types and, where a backend has a faster way, calls it (NumPy's in
:mod:`hessarray._numpy`); elsewhere it returns ``None`` (or the portable value, where that
is a no-op) and the caller runs its portable array-API code. The portable modules hold no
backend branches of their own and never import :mod:`hessarray._numpy`.

Checks on a namespace use :func:`array_api_compat.is_numpy_namespace` after ``xp is numpy``
(the common case, a pointer comparison; written out in each function, since small blocks
are call-bound). Checks on arrays where no namespace is at
hand compare the exact type with ``numpy.ndarray``: cheaper than
:func:`array_api_compat.is_numpy_array` on call-bound small blocks, and subclasses (masked
arrays, matrices) keep the portable path. The few fast paths called several times per layer
are NumPy's functions themselves, which make these checks (one Python call fewer each).
"""

from __future__ import annotations

import os
from typing import Any

import array_api_compat
import numpy
from array_api_compat import is_numpy_namespace

from . import _numpy
from ._numpy import allocator, arrays, loops

__all__ = [
    "add_diagonal",
    "blas_operand",
    "contract_symmetric",
    "dense_forward",
    "eager_cpu",
    "identity",
    "input_key",
    "keep_freed_memory",
    "matmul_rows",
    "native_namespace",
    "plan_key",
    "push_curvature",
    "repeat_view",
    "symmetrize",
    "threaded_blocks",
]


# -- namespaces and inputs ---------------------------------------------------------------------------
def native_namespace(xp: Any) -> Any:
    """``numpy`` itself for a NumPy namespace where NumPy implements the 2023.12 standard
    (array-api-compat's wrappers cost more than the work on small blocks), else ``xp``."""
    return numpy if arrays.NATIVE and is_numpy_namespace(xp) else xp


def input_key(x: Any) -> tuple | None:
    """The key under which a model remembers that it checked an input like ``x``, with the
    dtype in it (no dtype check per call): for a NumPy array; ``None`` elsewhere (the model
    keys by type and device and checks the dtype per call)."""
    return (numpy.ndarray, "cpu", x.dtype) if type(x) is numpy.ndarray else None


# -- planning ----------------------------------------------------------------------------------------
def plan_key(x: Any) -> tuple | None:
    """Where plans are remembered per chain (NumPy: small batches are call-bound), the part
    of the key that depends on the backend: the dtype, whether the compiled code may run
    (:data:`hessarray._numpy.ENABLED`) and ``HESSARRAY_THREADS``; ``None`` where each call
    plans anew (its default budget may depend on the device's free memory)."""
    if type(x) is not numpy.ndarray:
        return None
    return x.dtype, _numpy.ENABLED, os.environ.get("HESSARRAY_THREADS")


def threaded_blocks(xp: Any) -> bool:
    """Whether the block engine may run blocks on threads for namespace ``xp``: NumPy's
    operations release the GIL and its BLAS calls are limited to a thread each; other
    libraries schedule their own threads or devices."""
    return xp is numpy or is_numpy_namespace(xp)


def eager_cpu(xp: Any, x: Any) -> bool:
    """Whether ``x`` is computed eagerly on a CPU (NumPy, array-api-strict, torch CPU): there,
    blocks of samples that fit in cache are faster than one large block."""
    if xp is numpy or is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(xp):
        return True
    if array_api_compat.is_torch_namespace(xp):
        return x.device.type == "cpu"
    return False


def keep_freed_memory() -> bool:
    """Make the process keep freed memory for reuse (glibc's allocator, once per process:
    :mod:`hessarray._numpy.allocator`); returns whether the settings are in effect."""
    return allocator.keep_freed_memory()


# -- array helpers -----------------------------------------------------------------------------------
#: ``matmul_rows(xp, a, rows, w_t)``: ``a`` ``(..., n)`` times ``w_t`` ``(n, m)`` as one GEMM
#: over ``rows`` rows, on NumPy by the arrays' methods (no ``reshape`` dispatch); ``None``
#: elsewhere. The NumPy function checks the namespace itself (one call fewer, several per layer).
matmul_rows = arrays.matmul_rows


def repeat_view(xp: Any, a: Any, axis: int, count: int) -> Any | None:
    """On NumPy, for a C-contiguous ``a``, ``a`` repeated along a new axis as a view with
    stride 0 made directly; ``None`` elsewhere."""
    return arrays.repeat_view(a, axis, count) if xp is numpy or is_numpy_namespace(xp) else None


def identity(xp: Any, n: int, like: Any) -> Any | None:
    """On NumPy the ``(n, n)`` identity of ``like``'s dtype, made once and kept read-only;
    ``None`` elsewhere (other libraries make a new one)."""
    return arrays.identity(n, like.dtype) if xp is numpy or is_numpy_namespace(xp) else None


def add_diagonal(xp: Any, a: Any, c: Any) -> Any | None:
    """On NumPy ``c`` added into the diagonal of ``a`` in place (``a`` must be the caller's
    own temporary), returning ``a``; ``None`` where that does not apply."""
    return arrays.add_diagonal(a, c) if xp is numpy or is_numpy_namespace(xp) else None


def symmetrize(xp: Any, h: Any, owned: bool) -> Any | None:
    """On NumPy ``(h + hᵀ) / 2`` by a compiled loop, in place where ``owned``; ``None``
    elsewhere."""
    return arrays.symmetrize(h, owned) if xp is numpy or is_numpy_namespace(xp) else None


def contract_symmetric(xp: Any, left: Any, c: Any, right: Any) -> Any | None:
    """On NumPy, for ``left is right``, one output and many directions in float32, the
    forward-mode contraction ``Σ_r L[i] c R[j]`` as two products and a mirror; ``None``
    elsewhere."""
    return arrays.contract_split(left, c, right) if xp is numpy or is_numpy_namespace(xp) else None


def blas_operand(xp: Any, a: Any) -> Any:
    """``a`` as an operand read often by matrix products: a C-contiguous copy on NumPy
    (OpenBLAS multiplies small matrices faster by one), ``a`` itself elsewhere."""
    return numpy.ascontiguousarray(a) if xp is numpy or is_numpy_namespace(xp) else a


# -- layers ------------------------------------------------------------------------------------------
#: ``dense_forward(x, w, b)``: ``Dense.forward`` for NumPy ``x`` and ``w`` of one dtype, with
#: ``Wᵀ`` contiguous for small weights and the bias added in place: ``(y, (x, w, Wᵀ))``; ``None``
#: elsewhere. The NumPy function checks the types itself (one call fewer per layer).
dense_forward = arrays.dense_forward


#: ``push_curvature(df, d2f, g, t)``: an activation's tangents ``φ'·t`` and its curvature term
#: ``(B, m, k, k)`` in one compiled pass, for C-contiguous NumPy operands of one float dtype and
#: few directions; ``None`` elsewhere. The loop checks its operands itself (on small blocks a
#: separate check, or one more call, costs as much as the loop).
push_curvature = loops.push_curvature
