"""Forward mode: tangents forward, adjoints back, curvature summed as ``Σ_l Lᵀ R``.

For a chain of layers with tangents ``T_l`` entering layer ``l`` and adjoints ``λ_l`` leaving
it, the Hessian of output ``i`` with respect to the seed is

    H_i = Σ_l T_lᵀ (Σ_j λ_{l,ij} ∇²φ_{l,j}) T_l

(the notebook's ``I`` and ``O`` terms, unrolled). Each layer returns its term as factor pairs
``(L, R)``, contracted with one batched matrix product per pair.
"""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace, device
from ..layers.base import Layer, adjoints, forward_chain


def identity_seed(xp: Any, batch: int, n: int, like: Any) -> Any:
    """``(batch, n, n)`` identity per sample, as a broadcast view (no copy)."""
    eye = xp.eye(n, dtype=like.dtype, device=device(like))
    return xp.broadcast_to(eye[None, ...], (batch, n, n))


def contract(xp: Any, factors: list, batch: int, m: int, k: int) -> Any | None:
    """``Σ L @ Rᵀ`` over factor pairs: ``(B, m, k, k)``, or ``None`` if there are none.

    ``L`` is folded to ``(B, m·k, r)`` so each pair is one batched product with no broadcast
    batch axes (those fall off BLAS in NumPy).
    """
    h = None
    for left, right in factors:
        left = xp.reshape(left, (batch, m * k, left.shape[-1]))
        term = xp.matmul(left, xp.permute_dims(right, (0, 2, 1)))
        h = term if h is None else h + term
    return None if h is None else xp.reshape(h, (batch, m, k, k))


def forward_mode(layers: list[Layer], x: Any, hessian: bool) -> tuple[Any, Any, Any]:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``).

    Three passes: values forward, adjoints back (only from the first layer with curvature
    up), tangents forward with each layer's curvature added as soon as it is known, so no
    layer's tangents are kept.
    """
    xp = array_namespace(x)
    batch, d = x.shape
    steps, y = forward_chain(layers, x)
    m = y.shape[1]
    first = len(steps)
    g_out: list = [None] * len(steps)
    if hessian:
        first = next((i for i, s in enumerate(steps) if s.layer.has_curvature), len(steps))
        if first < len(steps):
            g_out[first:] = adjoints(steps[first:], identity_seed(xp, batch, m, x))
    t = identity_seed(xp, batch, d, x)
    h = None
    for step, g in zip(steps, g_out):
        t, factors = step.layer.push(step.cache, t, g)
        term = contract(xp, factors, batch, m, d)
        if term is not None:
            h = term if h is None else h + term
    jac = xp.permute_dims(t, (0, 2, 1))
    if not hessian:
        return y, jac, None
    if h is None:
        return y, jac, xp.zeros((batch, m, d, d), dtype=x.dtype, device=device(x))
    return y, jac, 0.5 * (h + xp.permute_dims(h, (0, 1, 3, 2)))
