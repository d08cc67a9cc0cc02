"""How derivatives flow through a chain of layers: planning, the two modes, parameters.

The engine talks to layers only through the contract of :mod:`hessarray.layers.base`, with
two exceptions, NumPy fast paths that recognize layers by type and read their weights:
:mod:`.tanh_mlp` (``Dense``, ``Tanh`` and ``Sum``) and :mod:`.tanh_resnet` (those, ``LogCosh``
and ``Residual``).
"""

from __future__ import annotations

import math
from typing import Any

from .._backend import array_namespace
from ..layers.base import Layer
from ..layers.losses import Sum
from . import batching, curvature
from .batching import map_blocks
from .budget import progress_bar
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


def _run_whole_network(layers: list[Layer], x: Any, xp: Any, plan: Plan, part: str, progress: Any) -> tuple | None:
    """:func:`_whole_network` on chunks of ``plan.chunk_size`` samples, one after another (each
    call shares its tiles among ``plan.workers`` threads), written into the outputs."""
    if plan.chunk_size >= x.shape[0]:
        batching.before_run(xp, x)
        found = _whole_network(layers, x, part, plan.workers)
        if found is not None and progress is not None:
            progress.update(1)
        return found
    one = Plan(plan.mode, plan.chunk_size, plan.flops, 1, plan.max_memory, plan.working_set, True)

    def run(block: list[Layer], xb: Any) -> tuple:
        found = _whole_network(block, xb, part, plan.workers)
        if found is None:  # pragma: no cover - the plan checked that the path applies
            raise RuntimeError("the compiled whole-network path no longer applies")
        return found

    return map_blocks(run, layers, x, one, ("cat", "cat", "cat"), xp, progress=progress)


def input_derivatives(layers: list[Layer], x: Any, xp: Any, plan: Plan, hessian: bool, progress: Any = None) -> tuple:
    """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (or ``None``).

    ``progress``: a bar advanced per block (see :func:`.batching.map_blocks`)."""
    if hessian and plan.mode == "forward" and plan.fused:
        fused = _run_whole_network(layers, x, xp, plan, "full", progress)
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
        progress=progress,
    )


def input_hessian_part(layers: list[Layer], x: Any, xp: Any, plan: Plan, part: str, progress: Any = None) -> tuple:
    """Value ``(B, m)`` and the Hessian's diagonal ``(B, m, d)`` (``part="diag"``) or trace
    ``(B, m)`` (``part="trace"``), by the forward mode."""
    if plan.fused:
        fused = _run_whole_network(layers, x, xp, plan, part, progress)
        if fused is not None:
            return fused[0], fused[2]
    return map_blocks(
        lambda block, xb: curvature.hessian_part(block, xb, part),
        layers,
        x,
        plan,
        ("cat", "cat"),
        xp,
        progress=progress,
    )


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
    with progress_bar(progress, -(-x.shape[0] // plan.chunk_size)) as bar:
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
    item = 4 if x.dtype == array_namespace(x).float32 else 8
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
