"""``Sequential``: an ordered chain of layers, its parameter names and its shape checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy

from ._backend import check_inputs, device, is_array_api_obj
from .layers.base import Array, Layer, forward_chain


class Sequential:
    """A model ``x ↦ layers[-1](… layers[0](x))`` evaluated on every sample of a batch.

    Parameters
    ----------
    *layers : Layer
        The layers in order. Widths are checked as far as they are known at construction
        (dense layers and targets fix them) and again against the input on every call.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> rng = np.random.default_rng(0)
    >>> model = ha.Sequential(ha.Dense(rng.standard_normal((8, 3))), ha.Tanh(),
    ...                       ha.Dense(rng.standard_normal((1, 8))), ha.Sum())
    >>> list(model.parameters())
    ['0.weight', '2.weight']
    >>> model(np.zeros((5, 3))).shape, len(model)
    ((5,), 4)
    """

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], list | tuple):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} is {type(layer).__name__}, not a hessarray layer")
            if layer.scalar_output and i != len(layers) - 1:
                raise ValueError(f"layer {i} ({layer!r}) reduces each sample to a number; it must be last")
        self.layers: list[Layer] = list(layers)
        # Only layers holding per-sample data (targets) check the batch size.
        self._batch_checked = [l for l in self.layers if type(l).check_batch is not Layer.check_batch]
        self._checked: dict = {}  # (type, device) of inputs already checked -> namespace
        self._widths_seen: dict[int, int] = {}
        start = next((i for i, l in enumerate(self.layers) if l.in_width is not None), None)
        if start is not None:
            self._widths(self.layers[start].in_width, start)

    # -- container protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice) -> Layer | Sequential:
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def __repr__(self) -> str:
        inner = ",\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"

    # -- structure ---------------------------------------------------------------------------
    @property
    def scalar_output(self) -> bool:
        """Whether the model maps a sample to one number (it ends in ``Sum`` or a loss)."""
        return self.layers[-1].scalar_output

    def parameters(self) -> dict[str, Array]:
        """The differentiable parameters, in order, by name (``"0.weight"``, ``"0.bias"``, …)."""
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.parameters().items()}

    def arrays(self) -> list[tuple[str, Array]]:
        """Every array the model holds (parameters and targets), named."""
        return [(f"{i}.{k}", v) for i, layer in enumerate(self.layers) for k, v in layer.arrays()]

    def locate(self, name: str) -> tuple[int, str]:
        """``"2.0.weight" -> (2, "0.weight")``; ``KeyError`` listing valid names if unknown."""
        names = list(self.parameters())
        if name not in names:
            raise KeyError(f"unknown parameter {name!r}; valid names are {names}")
        index, _, rest = name.partition(".")
        return int(index), rest

    def _widths(self, n: int, start: int = 0) -> list[int]:
        widths = [n]
        for i in range(start, len(self.layers)):
            layer = self.layers[i]
            try:
                n = layer.out_width(n)
            except ValueError as exc:
                prev = f"layer {i - 1} ({self.layers[i - 1]!r}) gives" if i > 0 else "the input has"
                raise ValueError(
                    f"layer {i} ({layer!r}) {exc}, but {prev} width {widths[-1]} (shape (batch, {widths[-1]}))"
                ) from None
            widths.append(n)
        return widths

    def output_width(self, d: int) -> int:
        """Width of the output for inputs of width ``d``; ``ValueError`` on a mismatch."""
        if d not in self._widths_seen:
            self._widths_seen[d] = self._widths(d)[-1]
        return self._widths_seen[d]

    # -- evaluation -----------------------------------------------------------------------------
    def prepare(self, x: Any) -> tuple[Any, Array, bool]:
        """Check ``x`` against the model; return ``(xp, x as (B, d), whether x was 1-D)``."""
        # The model's arrays never change, so one check per input type and device is enough.
        kind = type(x)
        if kind is numpy.ndarray:  # the dtype is part of the key: no dtype check per call
            key = (kind, "cpu", x.dtype)
        else:
            key = (kind, str(device(x)) if is_array_api_obj(x) else None)
        xp = self._checked.get(key)
        if xp is None:
            xp = check_inputs(x, self.arrays())
            self._checked[key] = xp
        elif kind is not numpy.ndarray and not xp.isdtype(x.dtype, "real floating"):
            check_inputs(x, [])  # raises the dtype error
        if x.ndim not in (1, 2):
            raise ValueError(f"x must have shape (batch, d) or (d,), got shape {tuple(x.shape)}")
        single = x.ndim == 1
        x2 = x[None, :] if single else x
        self.output_width(x2.shape[1])
        for layer in self._batch_checked:
            layer.check_batch(x2.shape[0])
        return xp, x2, single

    def __call__(self, x: Array) -> Array:
        """The model's output, ``(batch,)`` + ``o`` (``o = ()`` for scalar models)."""
        _, x2, single = self.prepare(x)
        _, y = forward_chain(self.layers, x2)
        if self.scalar_output:
            y = y[:, 0]
        return y[0, ...] if single else y
