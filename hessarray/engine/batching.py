"""Running a computation block by block over the batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..layers.base import Layer


def map_blocks(
    fn: Callable[..., tuple],
    layers: list[Layer],
    x: Any,
    chunk: int,
    combine: tuple[str, ...],
    xp: Any,
    *extra: Any,
) -> tuple:
    """Apply ``fn(layers, x_block, *extra_blocks)`` to blocks of ``chunk`` samples and
    combine the results. ``extra`` are more per-sample arrays, sliced like ``x``.

    ``combine[i]`` says how output ``i`` of the blocks is joined: ``"cat"`` along the batch
    axis, ``"sum"`` added up, ``"none"`` (the output is ``None``).
    """
    batch = x.shape[0]
    if chunk >= batch:
        return fn(layers, x, *extra)
    parts = []
    for start in range(0, batch, chunk):
        stop = min(start + chunk, batch)
        block = [layer.batch_slice(start, stop) for layer in layers]
        parts.append(fn(block, x[start:stop, ...], *(a[start:stop, ...] for a in extra)))
    out = []
    for i, how in enumerate(combine):
        items = [p[i] for p in parts]
        if how == "cat":
            out.append(xp.concat(items, axis=0))
        elif how == "sum":
            total = items[0]
            for item in items[1:]:
                total = total + item
            out.append(total)
        else:
            out.append(None)
    return tuple(out)


def check_same_backend(x: Any, other: Any, name: str) -> None:
    """``TypeError`` unless ``other`` is an array of ``x``'s library on ``x``'s device."""
    from .._backend import check_inputs

    check_inputs(x, [(name, other)])
