"""Derivatives with respect to one parameter.

The layer that owns the parameter maps ``x_p`` to ``y_p``; the rest of the model is a chain
``F`` of layers from ``y_p`` to the output. The input derivatives of ``F`` at ``y_p`` (either
mode) give the adjoint ``g`` and Hessian ``H_F``; the owner maps them onto its parameter.
For a dense layer, linear in ``W``: ``∂²/∂W² = H_F ⊗ x_p x_pᵀ`` per sample, summed over the
batch with one GEMM.
"""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace
from ..layers.base import Layer
from ..layers.chain import forward_chain
from ..layers.losses import Sum
from .forward import forward_mode
from .reverse import reverse_mode


def parameter_derivatives(
    layers: list[Layer],
    x: Any,
    index: int,
    name: str,
    mode: str,
    hessian: bool,
    per_sample: bool,
) -> tuple[Any, Any, Any]:
    """Value, gradient and Hessian with respect to parameter ``name`` of ``layers[index]``.

    ``mode`` is ``"forward"`` or ``"reverse"`` (already planned). Per sample the shapes are
    ``(B, m)``, ``(B, m, *shape)`` and ``(B, m, *shape, *shape)``; otherwise everything is
    summed over the batch and outputs: ``()``, ``shape`` and ``shape + shape``.
    """
    steps, _ = forward_chain(layers[: index + 1], x)
    step = steps[index]
    owner, cache, local, y_owner, downstream = step.layer.param_owner(step.cache, name, step.y)
    chain = downstream + list(layers[index + 1 :])
    if not per_sample:
        chain.append(Sum())  # d/dθ of the batch- and output-summed value: one adjoint
    run = forward_mode if mode == "forward" else reverse_mode
    y, g, h = run(chain, y_owner, hessian)
    grad = owner.param_gradient(cache, local, g, per_sample)
    hess = owner.param_hessian(cache, local, h, per_sample) if hessian else None
    if not per_sample:
        y = array_namespace(y).sum(y[:, 0])
    return y, grad, hess
