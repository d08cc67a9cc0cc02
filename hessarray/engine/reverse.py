"""Reverse mode: adjoints and Hessians pulled back from the output, ``O(L n³)`` per sample.

Through ``y = φ(x)``:  ``g ← g J``,  ``H ← Jᵀ H J + Σ_j g_j ∇²φ_j`` (each layer's
``pull_hessian``). Cheaper than the forward mode when the input is wider than the layers.
"""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace, device, symmetrize
from ..layers.base import Layer
from ..layers.chain import forward_chain, pull_chain, pull_hessian_chain
from .forward import identity_seed


def reverse_mode(layers: list[Layer], x: Any, hessian: bool) -> tuple[Any, Any, Any]:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``)."""
    xp = array_namespace(x)
    batch, d = x.shape
    steps, y = forward_chain(layers, x)
    m = y.shape[1]
    g = identity_seed(xp, batch, m, x)
    if not hessian:
        return y, pull_chain(steps, g), None
    jac, h = pull_hessian_chain(steps, g, None)
    if h is None:
        return y, jac, xp.zeros((batch, m, d, d), dtype=x.dtype, device=device(x))
    # The layers' pull_hessian results are new arrays (from h = None up): symmetrized in place.
    return y, jac, symmetrize(xp, h, owned=True)
