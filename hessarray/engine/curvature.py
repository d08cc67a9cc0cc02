"""Parts of the input Hessian without forming it: diagonal, trace, Hessian-vector products.

* diagonal and trace (Laplacian): forward mode keeping only ``Σ_r L c R`` of each factor
  triple (for the trace, ``Σ_i L R`` first), ``O(L n² d)`` per sample with no ``d²`` term;
* ``H v`` for ``k`` vectors: forward over reverse, ``O(L n² k)`` per sample: ``k`` tangents
  pushed forward, then second-order adjoints pulled back (each layer's ``curvature_apply``).
"""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace, device
from ..layers.base import Layer
from ..layers.chain import adjoints, forward_chain, pull_curvature_chain, push_keep
from .forward import forward_mode, identity_seed


def hessian_part(layers: list[Layer], x: Any, part: str) -> tuple[Any, Any]:
    """Value ``(B, m)`` and the Hessian's diagonal ``(B, m, d)`` (``part="diag"``) or trace,
    the Laplacian, ``(B, m)`` (``part="trace"``)."""
    y, _, found = forward_mode(layers, x, True, part=part)
    return y, found


def hvp(layers: list[Layer], x: Any, v: Any) -> tuple[Any, Any]:
    """Value ``(B, m)`` and ``H v`` ``(B, m, k, d)`` for ``v`` of shape ``(B, k, d)``."""
    xp = array_namespace(x)
    steps, y = forward_chain(layers, x)
    batch, m = y.shape
    _, t_in = push_keep(steps, xp.permute_dims(v, (1, 0, 2)))  # tangents are direction-major
    hv = pull_curvature_chain(steps, adjoints(steps, identity_seed(xp, batch, m, x)), t_in)
    if hv is None:
        hv = xp.zeros((batch, m, v.shape[1], x.shape[1]), dtype=x.dtype, device=device(x))
    return y, hv
