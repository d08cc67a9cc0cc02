"""The executors that compute input derivatives, and the registry the plan picks one from.

An executor is one way of running a :class:`~hessarray.engine.plan.Plan`:

- ``"portable"``: the engine's array-API passes (:mod:`.forward`, :mod:`.reverse`,
  :mod:`.curvature`) block by block (:func:`.batching.map_blocks`). The reference: it applies
  to every model, backend and request.
- ``"numpy-compiled"``: NumPy's compiled whole-network kernel (numba,
  :mod:`hessarray._numpy.executor`), one call per chunk of samples that shares its tiles among
  the threads. It applies to every model whose layers lower to the kernel's steps through the
  layer contract (:meth:`~hessarray.layers.base.Layer.lower`: dense layers, every built-in
  activation, residual blocks of those, ``Sum``, ``MSELoss``) on NumPy float input, for the
  full Hessian, its diagonal, its trace or Hessian-vector products in the forward mode.

Each executor says whether it applies (:meth:`Executor.applies`, from the layers' structure,
shapes and dtype, never array values), what a call holds in memory besides its outputs
(:meth:`Executor.memory`, for the plan's sizes), and runs a plan (:meth:`Executor.run`).
:func:`~hessarray.engine.plan.make_plan` names the first executor of :data:`REGISTRY` that
applies in :attr:`Plan.executor <hessarray.engine.plan.Plan.executor>`, and the engine runs
that one: what ``ha.plan(model, x).executor`` reports is what runs.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from .._numpy.executor import NumpyCompiled
from ..layers.base import Layer
from . import curvature
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
    #: Samples per tile where the executor runs the batch in tiles of its own (the most; such an
    #: executor also has ``tile_rows(layers, d, item)``, the plan's tile for a network), else
    #: ``None``.
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

    def run(
        self, layers: list[Layer], x: Any, xp: Any, plan: Any, part: str, progress: Any = None, v: Any = None
    ) -> tuple:
        """Value ``(B, m)``, Jacobian ``(B, m, d)`` and Hessian ``(B, m, d, d)`` (``None`` for
        ``part="jacobian"``), or value and the Hessian's diagonal ``(B, m, d)`` or trace
        ``(B, m)`` (``part="diag"``, ``"trace"``), or value and ``H v`` ``(B, m, p, d)`` for
        vectors ``v`` ``(B, p, d)`` (``part="hvp"``), as ``plan`` says; ``progress``: a bar
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

    def run(
        self, layers: list[Layer], x: Any, xp: Any, plan: Any, part: str, progress: Any = None, v: Any = None
    ) -> tuple:
        if part == "hvp":
            run = lambda block, xb, vb: curvature.hvp(block, xb, vb)  # noqa: E731
            return map_blocks(run, layers, x, plan, ("cat", "cat"), xp, v, progress=progress)
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


#: The executors in the order the plan tries them (:func:`.plan.make_plan`): the first that
#: applies and fits the memory budget runs. The portable one applies everywhere, so it is last.
REGISTRY: dict[str, Executor] = {e.name: e for e in (NumpyCompiled(), Portable())}
