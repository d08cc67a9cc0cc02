"""The compiled NumPy executor: a whole lowered network per call (:mod:`.lowering`,
:mod:`.network`), registered in :data:`hessarray.engine.executors.REGISTRY`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy

from .. import _numpy
from .._backend import symmetrize
from ..engine.batching import map_blocks
from ..engine.forward import map_back
from ..engine.plan import remembered
from ..tuning import TILE
from . import network
from .lowering import Program, lower_network

try:
    from .pointwise import CODES, from_output
except ImportError:  # pragma: no cover - without numba
    CODES, from_output = {}, None

_DTYPES = {4: numpy.dtype(numpy.float32), 8: numpy.dtype(numpy.float64)}


def lowered(layers: list, x: Any) -> Program | None:
    """The program of ``layers`` for ``x``, where the compiled executor computes them exactly:
    NumPy float input of two axes and at least one sample, every layer lowered to steps the
    kernel knows, its arrays NumPy's; else ``None``."""
    if not (_numpy.ENABLED and network.HAVE_BLAS and type(x) is numpy.ndarray and x.ndim == 2):
        return None
    if x.dtype not in _numpy.FLOATS or x.shape[0] == 0:
        return None
    prog = _structure(layers, x.shape[1], x.dtype)
    return None if prog is None else prog.with_arrays(layers)


def _structure(layers: list, d: int, dtype: Any) -> Program | None:
    """The program of ``layers`` with the arrays it was lowered with: lowered once per chain,
    width and dtype (layers are immutable); each call takes the layers' arrays as they are
    now (:meth:`~.lowering.Program.with_arrays`)."""
    return remembered(
        _PROGRAMS, layers, (d, dtype), lambda: lower_network(layers, numpy.empty((1, d), dtype), CODES, from_output)
    )


_PROGRAMS: dict = {}


class NumpyCompiled:
    """Every lowered network on NumPy: Dense, every built-in activation, residual blocks of
    those, and the ends ``Sum`` and ``MSELoss`` (or the outputs themselves).

    The plan's ``chunk_size`` is the samples per call (the whole batch unless the memory
    budget, or :data:`hessarray.tuning.REDUCED_BYTES` for a diagonal or trace, splits it); each
    call shares its tiles of ``plan.tile`` samples among ``plan.workers`` threads. For a
    diagonal or trace only the diagonal is formed: no ``(B, d, d)`` array."""

    name = "numpy-compiled"
    tile = TILE

    def applies(self, layers: list, x: Any, part: str, mode: str) -> bool:
        if mode != "forward" or part not in ("full", "diag", "trace", "hvp"):
            return False
        return lowered(layers, x) is not None

    def _program(self, layers: list, d: int, item: int) -> Program | None:
        if not (_numpy.ENABLED and network.HAVE_BLAS):
            return None
        return _structure(layers, d, _DTYPES[item])

    def tile_rows(self, layers: list, d: int, item: int) -> int:
        """Samples per tile for this network (:func:`.network.tile_rows`)."""
        prog = self._program(layers, d, item)
        return TILE if prog is None else network.tile_rows(prog, item)

    def memory(self, layers: list, d: int, part: str, mode: str, directions: int | None, item: int) -> tuple[int, int]:
        """Each thread's tile buffers; per sample, the ``(k, k)`` Hessian where it is mapped back
        from ``k`` narrowed seeds to ``d``, else the Jacobian and diagonal that the diagonal and
        trace do not return (the value, Jacobian and full Hessian are written into the
        outputs)."""
        prog = self._program(layers, d, item)
        if prog is None:
            return 0, 0
        m, k, tile = prog.outputs, prog.directions, network.tile_rows(prog, item)
        per_sample = 0
        if part == "hvp":  # the Jacobian, and the products in the narrowed space
            per_sample = item * m * k * (1 + (directions or 1))
        elif prog.outer is not None:
            per_sample = item * m * (k * k + 2 * k * d + d * d)
        elif part != "full":
            per_sample = item * m * 2 * k
        buffers = prog.width * (prog.slots * (1 + m + k) + prog.acts * (2 + m) + max(m, k) + k)
        # A call's own arrays: the seed's transpose and pair products, the weights' transposes,
        # and copies of weights of another dtype or layout.
        copies = prog.width * k * (k + 3) // 2 + sum(w.size for w in prog.weights) * (1 + prog.copies)
        return item * (tile * buffers + k * k + tile * m * k * (k + 1) // 2 + copies), per_sample

    def run(self, layers: list, x: Any, xp: Any, plan: Any, part: str, progress: Any = None, v: Any = None) -> tuple:
        def run_chunk(block: list, xb: Any, vb: Any = None) -> tuple:
            prog = lowered(block, xb)
            if prog is None:  # pragma: no cover - the plan checked that the path applies
                raise RuntimeError("the compiled executor no longer applies")
            narrowed = prog.outer is not None
            if part == "hvp":  # (B, p, d); narrowed: in the first layer's outputs, W₀ v, and back
                vk = vb @ prog.outer.T if narrowed else vb
                y, _, hv = network.run(prog, xb, "hvp", plan.workers, plan.tile, vk)
                return y, hv @ prog.outer if narrowed else hv
            y, jac, h = network.run(prog, xb, "full" if narrowed or part == "full" else "diag", plan.workers, plan.tile)
            if narrowed:  # back from the first layer's outputs to the input: J W₀, W₀ᵀ H W₀
                jac = jac @ prog.outer
                h = map_back(numpy, h, prog.outer.T, part)
                if part == "full":
                    h = symmetrize(numpy, h, owned=True)
            elif part == "trace":
                h = numpy.sum(h, axis=-1)
            return (y, jac, h) if part == "full" else (y, h)

        # Chunks one after another (one block in flight), each call sharing its tiles among
        # the plan's threads.
        one = replace(plan, workers=1)
        joins = ("cat", "cat", "cat") if part == "full" else ("cat", "cat")
        extra = () if v is None else (v,)
        return map_blocks(run_chunk, layers, x, one, joins, xp, *extra, progress=progress)
