"""Forward mode: tangents forward, adjoints back, curvature summed as ``Σ_l Lᵀ R``.

For a chain of layers with tangents ``T_l`` entering layer ``l`` and adjoints ``λ_l`` leaving
it, the Hessian of output ``i`` with respect to the seed is

    H_i = Σ_l T_lᵀ (Σ_j λ_{l,ij} ∇²φ_{l,j}) T_l

(the notebook's ``I`` and ``O`` terms, unrolled). Each layer returns its term as factor pairs
``(L, R)``, contracted with one batched matrix product per pair.
"""

from __future__ import annotations

from typing import Any

import numpy

from .._backend import array_namespace, device
from ..layers.base import Layer, adjoints, forward_chain


def identity_seed(xp: Any, batch: int, n: int, like: Any) -> Any:
    """``(batch, n, n)`` identity per sample, as a broadcast view (no copy)."""
    eye = xp.eye(n, dtype=like.dtype, device=device(like))
    return xp.broadcast_to(eye[None, ...], (batch, n, n))


def contract(xp: Any, factors: list, batch: int, m: int, k: int, part: str) -> Any | None:
    """``Σ L @ Rᵀ`` over factor pairs, or ``None`` if there are none.

    ``part="full"`` gives ``(B, m, k, k)``: ``L`` is folded to ``(B, m·k, r)`` so each pair
    is one batched product with no broadcast batch axes (those fall off BLAS in NumPy).
    ``part="diag"`` gives only the diagonal ``(B, m, k)``: ``Σ_r L R``, no ``k²`` work.
    """
    h = None
    for left, right in factors:
        if part == "diag":
            term = xp.sum(left * right[:, None, ...], axis=-1)
        else:
            left = xp.reshape(left, (batch, m * k, left.shape[-1]))
            right_t = xp.permute_dims(right, (0, 2, 1))
            if k >= 8 and xp is numpy:  # NumPy fast path: a transposed view falls off BLAS
                right_t = numpy.ascontiguousarray(right_t)
            term = xp.reshape(xp.matmul(left, right_t), (batch, m, k, k))
        h = term if h is None else h + term
    return h


def forward_mode(
    layers: list[Layer], x: Any, hessian: bool, seed: Any | None = None, part: str = "full"
) -> tuple[Any, Any, Any]:
    """Value ``(B, m)``, Jacobian ``(B, m, k)`` and Hessian ``(B, m, k, k)`` (or ``None``).

    The ``k`` directions are the rows of ``seed`` ``(B, k, d)`` (default: the identity,
    ``k = d``). With ``part="diag"`` only the Hessian's diagonal ``(B, m, k)`` is formed.

    Three passes: values forward, adjoints back (only from the first layer with curvature
    up), tangents forward with each layer's curvature added as soon as it is known, so no
    layer's tangents are kept.
    """
    xp = array_namespace(x)
    batch, d = x.shape
    steps, y = forward_chain(layers, x)
    m = y.shape[1]
    g_out: list = [None] * len(steps)
    if hessian:
        first = next((i for i, s in enumerate(steps) if s.layer.has_curvature), len(steps))
        if first < len(steps):
            g_out[first:] = adjoints(steps[first:], identity_seed(xp, batch, m, x))
    k = d if seed is None else seed.shape[1]
    t = seed
    h = None
    for step, g in zip(steps, g_out):
        if t is None and g is None:  # first layer, no curvature: write its Jacobian down
            t, factors = step.layer.push_identity(step.cache, x), []
        else:
            if t is None:
                t = identity_seed(xp, batch, d, x)
            t, factors = step.layer.push(step.cache, t, g)
        term = contract(xp, factors, batch, m, k, part)
        if term is not None:
            h = term if h is None else h + term
    if t is None:  # no layers
        t = identity_seed(xp, batch, d, x)
    jac = xp.permute_dims(t, (0, 2, 1))
    if not hessian:
        return y, jac, None
    shape = (batch, m, k) if part == "diag" else (batch, m, k, k)
    if h is None:
        return y, jac, xp.zeros(shape, dtype=x.dtype, device=device(x))
    if part == "diag":
        return y, jac, h
    return y, jac, 0.5 * (h + xp.permute_dims(h, (0, 1, 3, 2)))
