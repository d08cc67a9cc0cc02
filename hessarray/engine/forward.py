"""Forward mode: tangents forward, adjoints back, curvature summed as ``Σ_l Lᵀ R``.

For a chain of layers with tangents ``T_l`` entering layer ``l`` and adjoints ``λ_l`` leaving
it, the Hessian of output ``i`` with respect to the seed is

    H_i = Σ_l T_lᵀ (Σ_j λ_{l,ij} ∇²φ_{l,j}) T_l

(the notebook's ``I`` and ``O`` terms, unrolled). Each layer returns its term as factor pairs
``(L, R)``; all pairs are concatenated and contracted in one batched matrix product.
"""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace, device
from ..layers.base import Layer, adjoints, curvature_chain, forward_chain


def identity_seed(xp: Any, batch: int, n: int, like: Any) -> Any:
    """``(batch, n, n)`` identity per sample, as a broadcast view (no copy)."""
    eye = xp.eye(n, dtype=like.dtype, device=device(like))
    return xp.broadcast_to(eye[None, ...], (batch, n, n))


def contract_factors(xp: Any, factors: list, batch: int, m: int, k: int, like: Any) -> Any:
    """``Σ L @ Rᵀ`` over the factor pairs as one matmul, symmetrised: ``(B, m, k, k)``."""
    if not factors:
        return xp.zeros((batch, m, k, k), dtype=like.dtype, device=device(like))
    lefts = [xp.reshape(left, (batch, m * k, left.shape[-1])) for left, _ in factors]
    rights = [right for _, right in factors]
    left = lefts[0] if len(lefts) == 1 else xp.concat(lefts, axis=-1)
    right = rights[0] if len(rights) == 1 else xp.concat(rights, axis=-1)
    h = xp.reshape(xp.matmul(left, xp.permute_dims(right, (0, 2, 1))), (batch, m, k, k))
    return 0.5 * (h + xp.permute_dims(h, (0, 1, 3, 2)))


def forward_mode(layers: list[Layer], x: Any, hessian: bool) -> tuple[Any, Any, Any]:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``)."""
    xp = array_namespace(x)
    batch, d = x.shape
    steps, y, t = forward_chain(layers, x, identity_seed(xp, batch, d, x))
    jac = xp.permute_dims(t, (0, 2, 1))
    if not hessian:
        return y, jac, None
    m = y.shape[1]
    # Adjoints are needed only from the first layer with curvature upwards.
    first = next((i for i, s in enumerate(steps) if s.layer.has_curvature), len(steps))
    factors = []
    if first < len(steps):
        g = identity_seed(xp, batch, m, x)
        factors = curvature_chain(steps[first:], adjoints(steps[first:], g))
    return y, jac, contract_factors(xp, factors, batch, m, d, x)
