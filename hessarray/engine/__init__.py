"""How derivatives flow through a chain of layers: planning, the two modes, parameters.

The engine talks to layers only through the contract of :mod:`hessarray.layers.base`, with
two exceptions, NumPy fast paths that recognize layers by type and read their weights:
:mod:`.tanh_mlp` (``Dense``, ``Tanh`` and ``Sum``) and :mod:`.tanh_resnet` (those, ``LogCosh``
and ``Residual``).
"""

from __future__ import annotations

from typing import Any

from ..layers.base import Layer
from ..layers.losses import Sum
from . import batching, curvature
from .batching import map_blocks
from .forward import forward_mode
from .params import parameter_derivatives
from .plan import Plan, make_plan
from .reverse import reverse_mode
from .tanh_mlp import tanh_mlp_derivatives
from .tanh_resnet import tanh_resnet_derivatives

__all__ = ["Plan", "batching", "curvature", "input_derivatives", "input_hessian_part", "make_plan", "param_derivatives"]


def _whole_network(layers: list[Layer], x: Any, part: str, workers: int) -> tuple | None:
    """The forward mode by one compiled call for the whole network, where one applies (a tanh
    MLP or a residual tanh network on NumPy), else ``None``."""
    found = tanh_mlp_derivatives(layers, x, part, workers)
    return found if found is not None else tanh_resnet_derivatives(layers, x, part, workers)


def input_derivatives(layers: list[Layer], x: Any, xp: Any, plan: Plan, hessian: bool) -> tuple:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``)."""
    if hessian and plan.mode == "forward":
        fused = _whole_network(layers, x, "full", plan.workers)
        if fused is not None:
            return fused
    run = forward_mode if plan.mode == "forward" else reverse_mode
    return map_blocks(
        lambda block, xb: run(block, xb, hessian),
        layers,
        x,
        plan,
        ("cat", "cat", "cat" if hessian else "none"),
        xp,
    )


def input_hessian_part(layers: list[Layer], x: Any, xp: Any, plan: Plan, part: str) -> tuple:
    """Value ``(B, m)`` and the Hessian's diagonal ``(B, m, d)`` (``part="diag"``) or trace
    ``(B, m)`` (``part="trace"``), by the forward mode."""
    fused = _whole_network(layers, x, part, plan.workers)
    if fused is not None:
        return fused[0], fused[2]
    return map_blocks(lambda block, xb: curvature.hessian_part(block, xb, part), layers, x, plan, ("cat", "cat"), xp)


def param_derivatives(
    layers: list[Layer], x: Any, xp: Any, index: int, name: str, plan_args: dict, hessian: bool, per_sample: bool
) -> tuple:
    """Value, gradient and Hessian with respect to one parameter (see :mod:`.params`)."""
    # Plan on the chain that follows the owner: its width is the number of tangents.
    n = x.shape[1]
    for layer in layers[:index]:
        n = layer.out_width(n)
    # The owner's output width is the number of tangents (for a parameter nested in a
    # residual block, the block's width stands in for it).
    tail = list(layers[index + 1 :]) + ([] if per_sample else [Sum()])
    plan = make_plan(tail, x.shape[0], layers[index].out_width(n), x, xp, hessian=hessian, **plan_args)
    how = "cat" if per_sample else "sum"
    return map_blocks(
        lambda block, xb: parameter_derivatives(block, xb, index, name, plan.mode, hessian, per_sample),
        layers,
        x,
        plan,
        (how, how, how if hessian else "none"),
        xp,
    )
