"""How derivatives flow through a chain of layers: planning, executors, the two modes, parameters.

A call is planned first (:func:`.plan.make_plan`, from shapes alone): the mode, the block
sizes, and the executor that runs (:mod:`.executors`): the portable array-API passes
(:mod:`.forward`, :mod:`.reverse`, :mod:`.curvature`, block by block), or, where they apply,
NumPy's compiled network kernel (:mod:`hessarray._numpy.executor`). :func:`input_derivatives`
and :func:`input_hessian_part` run the executor the plan names (``ha.plan(model, x).executor``).

The engine talks to layers only through the contract of :mod:`hessarray.layers.base`; the
compiled kernel too, through :meth:`~hessarray.layers.base.Layer.lower`.
"""

from __future__ import annotations

import math
from typing import Any

from ..layers.base import Layer
from ..layers.losses import Sum
from . import batching, curvature, executors
from .batching import map_blocks
from .budget import itemsize, progress_bar
from .forward import forward_mode
from .params import parameter_derivatives
from .plan import Plan, make_plan
from .reverse import reverse_mode

__all__ = [
    "Plan",
    "batching",
    "curvature",
    "executors",
    "forward_mode",
    "input_derivatives",
    "input_hessian_part",
    "make_plan",
    "param_derivatives",
    "reverse_mode",
]


def input_derivatives(layers: list[Layer], x: Any, xp: Any, plan: Plan, hessian: bool, progress: Any = None) -> tuple:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``), by
    the executor ``plan`` names.

    ``progress``: a bar advanced per block (see :func:`.batching.map_blocks`)."""
    run = executors.REGISTRY[plan.executor].run
    return run(layers, x, xp, plan, "full" if hessian else "jacobian", progress)


def input_hessian_part(layers: list[Layer], x: Any, xp: Any, plan: Plan, part: str, progress: Any = None) -> tuple:
    """Value ``(B, m)`` and the Hessian's diagonal ``(B, m, d)`` (``part="diag"``) or trace
    ``(B, m)`` (``part="trace"``), by the forward mode of the executor ``plan`` names."""
    return executors.REGISTRY[plan.executor].run(layers, x, xp, plan, part, progress)


def param_derivatives(
    layers: list[Layer],
    x: Any,
    xp: Any,
    index: int,
    name: str,
    plan_args: dict,
    hessian: bool,
    per_sample: bool,
    progress: bool = False,
) -> tuple:
    """Value, gradient and Hessian with respect to one parameter (see :mod:`.params`);
    ``progress``: a bar over the blocks (:func:`.budget.progress_bar`)."""
    # Plan on the chain that follows the owner: its width is the number of tangents.
    n = x.shape[1]
    for layer in layers[:index]:
        n = layer.out_width(n)
    # The owner's output width is the number of tangents (for a parameter nested in a
    # residual block, the block's width stands in for it).
    tail = list(layers[index + 1 :]) + ([] if per_sample else [Sum()])
    width = layers[index].out_width(n)
    memory = _param_memory(layers, x, index, name, width, hessian, per_sample)
    plan = make_plan(tail, x.shape[0], width, x, xp, hessian=hessian, **memory, **plan_args)
    how = "cat" if per_sample else "sum"
    with progress_bar(progress, plan.blocks(x.shape[0])) as bar:
        return map_blocks(
            lambda block, xb: parameter_derivatives(block, xb, index, name, plan.mode, hessian, per_sample),
            layers,
            x,
            plan,
            (how, how, how if hessian else "none"),
            xp,
            progress=bar,
        )


def _param_memory(
    layers: list[Layer], x: Any, index: int, name: str, width: int, hessian: bool, per_sample: bool
) -> dict[str, int]:
    """Bytes a block holds beyond the tail chain's working set: the layers up to the owner
    (their caches), and the results: per sample, or summed over the block (a partial sum, the
    running total and the new total)."""
    item = itemsize(x)
    size = math.prod(layers[index].parameters()[name].shape)
    out = 1 + size + (size * size if hessian else 0)
    units, n = x.shape[1], x.shape[1]
    for layer in layers[:index]:
        n = layer.out_width(n)
        units += n
    fan_in, m = n, width
    for layer in layers[index + 1 :]:
        m = layer.out_width(m)
    per = item * (4 * (units + width) + 3 * (width * width + fan_in * fan_in))  # caches; H_F and x xᵀ
    if per_sample:
        return {"sample_bytes": per + item * m * out, "block_bytes": 0}
    return {"sample_bytes": per, "block_bytes": 3 * item * out}
