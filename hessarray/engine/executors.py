"""The executors that compute input derivatives, and the registry the plan picks one from.

An executor is one way of running a :class:`~hessarray.engine.plan.Plan`:

- ``"portable"``: the engine's array-API passes (:mod:`.forward`, :mod:`.reverse`,
  :mod:`.curvature`) block by block (:func:`.batching.map_blocks`). The reference: it applies
  to every model, backend and request.
- ``"numpy-compiled"``: NumPy's compiled whole-network kernels (numba), a tanh MLP
  (:mod:`.tanh_mlp`) or a residual tanh network (:mod:`.tanh_resnet`), each one call per chunk
  of samples that shares its tiles among the threads. It applies where their checks say that
  they compute the model exactly, for the full Hessian, its diagonal or its trace in the
  forward mode.

Each executor says whether it applies (:meth:`Executor.applies`, from the layers' structure,
shapes and dtype, never array values), what a call holds in memory besides its outputs
(:meth:`Executor.memory`, for the plan's sizes), and runs a plan (:meth:`Executor.run`).
:func:`~hessarray.engine.plan.make_plan` names the first executor of :data:`REGISTRY` that
applies in :attr:`Plan.executor <hessarray.engine.plan.Plan.executor>`, and the engine runs
that one: what ``ha.plan(model, x).executor`` reports is what runs.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Protocol

from ..layers.base import Layer
from . import curvature, tanh_mlp, tanh_resnet
from .batching import map_blocks
from .forward import forward_mode
from .reverse import reverse_mode

#: What a call asks for: the full Hessian (with the value and Jacobian), the Jacobian alone,
#: the Hessian's diagonal or trace, or Hessian-vector products.
PARTS = ("full", "jacobian", "diag", "trace", "hvp")


class Executor(Protocol):
    """What the plan needs of an executor."""

    #: The name a :class:`~hessarray.engine.plan.Plan` gives it (its ``executor``).
    name: str
    #: Samples per tile where the executor runs the batch in tiles of its own, else ``None``.
    tile: int | None

    def applies(self, layers: list[Layer], x: Any, part: str, mode: str) -> bool:
        """Whether it computes ``part`` (one of :data:`PARTS`) of ``layers`` at ``x`` in ``mode``
        exactly, from shapes, dtype and layer structure alone."""
        ...

    def memory(
        self, layers: list[Layer], d: int, part: str, mode: str, directions: int | None, item: int
    ) -> tuple[int, int]:
        """Bytes held besides the outputs, ``(per thread, per sample)``: each thread's block (or
        tile buffers), and each sample's share; for ``d`` inputs, ``directions`` HVP directions
        and ``item`` bytes per number."""
        ...

    def run(self, layers: list[Layer], x: Any, xp: Any, plan: Any, part: str, progress: Any = None) -> tuple:
        """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (``None`` for
        ``part="jacobian"``), or value and the Hessian's diagonal ``(B, m, d)`` or trace
        ``(B, m)`` (``part="diag"``, ``"trace"``), as ``plan`` says; ``progress``: a bar
        advanced per block or call."""
        ...


class Portable:
    """The array-API passes, block by block: every backend, every model, every request."""

    name = "portable"
    tile = None

    def applies(self, layers: list[Layer], x: Any, part: str, mode: str) -> bool:
        return True

    def memory(
        self, layers: list[Layer], d: int, part: str, mode: str, directions: int | None, item: int
    ) -> tuple[int, int]:
        """Per block, the weights' transposed and contiguous copies; per sample,
        :func:`.plan.working_set`."""
        from .plan import working_set  # plan.py imports this module

        hessian = part != "jacobian"
        per_sample = item * working_set(layers, d, mode, hessian, part if hessian else "full", directions)
        weights = sum(math.prod(a.shape) for layer in layers for a in layer.parameters().values())
        return 2 * item * weights, per_sample

    def run(self, layers: list[Layer], x: Any, xp: Any, plan: Any, part: str, progress: Any = None) -> tuple:
        if part in ("full", "jacobian"):
            hessian = part == "full"
            passes = forward_mode if plan.mode == "forward" else reverse_mode
            return map_blocks(
                lambda block, xb: passes(block, xb, hessian),
                layers,
                x,
                plan,
                ("cat", "cat", "cat" if hessian else "none"),
                xp,
                progress=progress,
            )
        return map_blocks(
            lambda block, xb: curvature.hessian_part(block, xb, part),
            layers,
            x,
            plan,
            ("cat", "cat"),
            xp,
            progress=progress,
        )


def _whole_network(layers: list[Layer], x: Any, part: str, workers: int) -> tuple | None:
    """The forward mode by one compiled call for the whole network, where one applies (a tanh
    MLP or a residual tanh network on NumPy), else ``None``."""
    found = tanh_mlp.tanh_mlp_derivatives(layers, x, part, workers)
    return found if found is not None else tanh_resnet.tanh_resnet_derivatives(layers, x, part, workers)


class NumpyCompiled:
    """NumPy's compiled whole-network kernels (:mod:`.tanh_mlp`, :mod:`.tanh_resnet`).

    The plan's ``chunk_size`` is the samples per call (the whole batch unless the memory budget,
    or :data:`hessarray.tuning.REDUCED_BYTES` for a diagonal or trace, splits it); each call
    shares its tiles of :attr:`tile` samples among ``plan.workers`` threads. For a diagonal or
    trace the kernels keep each tile's Hessians in a buffer of their own and write out only
    the diagonal: no ``(B, d, d)`` array is formed."""

    name = "numpy-compiled"
    tile = tanh_mlp.TILE

    def applies(self, layers: list[Layer], x: Any, part: str, mode: str) -> bool:
        if mode != "forward" or part not in ("full", "diag", "trace"):
            return False
        return tanh_mlp.applies(layers, x) or tanh_resnet.applies(layers, x)

    def memory(
        self, layers: list[Layer], d: int, part: str, mode: str, directions: int | None, item: int
    ) -> tuple[int, int]:
        """Each thread's tile buffers (with a tile's ``(k, k)`` Hessians where only their
        diagonal or trace is kept); per sample, the ``(k, k)`` Hessian where it is mapped back
        from ``k = n`` seeds to ``d``, else the Jacobian and diagonal that the diagonal and
        trace do not return (the value, Jacobian and full Hessian are written into the
        outputs)."""
        n = layers[0].out_width(d)
        narrowed = d > n
        k = n if narrowed else d
        per_sample, per_tile = 0, 0
        if narrowed:
            per_sample = item * (2 + k * k + 2 * k * d + d * d)
        elif part != "full":
            per_sample, per_tile = item * (k + d), item * self.tile * k * k
        widest, depth, width = d, 0, d
        for layer in layers:
            width = layer.out_width(width)
            widest, depth = max(widest, width), depth + 1
        return item * self.tile * widest * (2 * depth + 8 + 2 * k) + per_tile, per_sample

    def run(self, layers: list[Layer], x: Any, xp: Any, plan: Any, part: str, progress: Any = None) -> tuple:
        def run_chunk(block: list[Layer], xb: Any) -> tuple:
            found = _whole_network(block, xb, part, plan.workers)
            if found is None:  # pragma: no cover - the plan checked that the path applies
                raise RuntimeError("the compiled whole-network path no longer applies")
            return found

        # Chunks one after another (one block in flight), each call sharing its tiles among
        # the plan's threads.
        one = replace(plan, workers=1)
        found = map_blocks(run_chunk, layers, x, one, ("cat", "cat", "cat"), xp, progress=progress)
        return found if part == "full" else (found[0], found[2])


#: The executors in the order the plan tries them (:func:`.plan.make_plan`): the first that
#: applies and fits the memory budget runs. The portable one applies everywhere, so it is last.
REGISTRY: dict[str, Executor] = {e.name: e for e in (NumpyCompiled(), Portable())}
