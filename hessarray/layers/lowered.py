"""The steps a layer lowers to (:meth:`Layer.lower <hessarray.layers.base.Layer.lower>`).

A compiled executor does not run layers' Python methods; it runs a small program of these
steps, which each layer gives for itself through the contract. A layer that cannot be
expressed by them (a user's Python :class:`~hessarray.layers.elementwise.Elementwise`, a
softmax loss) returns ``None``, and the model runs on the portable executor.

- :class:`Affine`: ``y = x Wᵀ + b``;
- :class:`Pointwise`: ``y = φ(x)`` elementwise, for a function the executor knows by name
  (``"tanh"``, ``"softplus"``, …) with its parameters;
- :class:`Block`: ``y = x + h · body(x)``, ``body`` a tuple of steps;
- :class:`Total`: ``y = Σ_i x_i``, an end;
- :class:`SquaredError`: ``y = mean_i (x_i - target_i)²``, an end.

The steps hold the layer's own arrays (no copies), in whatever library the layer holds them.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Affine(NamedTuple):
    """``y = x Wᵀ + b`` with ``weight`` ``(out, in)`` and ``bias`` ``(out,)`` or ``None``."""

    weight: Any
    bias: Any


class Pointwise(NamedTuple):
    """``y = φ(x)`` elementwise; ``name`` says which ``φ``, ``params`` its constants (at most
    two: softplus's ``beta``, ELU's ``alpha``, leaky ReLU's ``slope``, the power's ``p``);
    ``curved``: whether ``φ''`` is not identically zero."""

    name: str
    params: tuple[float, ...]
    curved: bool


class Block(NamedTuple):
    """``y = x + h · body(x)``, ``body`` a tuple of steps that keeps the width."""

    h: float
    body: tuple


class Total(NamedTuple):
    """``y = Σ_i x_i``: the model's end."""


class SquaredError(NamedTuple):
    """``y = mean_i (x_i - target_i)²``: the model's end; ``target`` ``(m,)`` or ``(B, m)``."""

    target: Any


#: Any of the steps.
Step = Affine | Pointwise | Block | Total | SquaredError
