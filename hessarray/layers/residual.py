"""Residual block ``y = x + h · block(x)`` around a width-preserving chain of layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._backend import array_namespace
from .base import Array, Layer, rebuilt
from .chain import (
    adjoints,
    forward_chain,
    pull_curvature_chain,
    pull_hessian_chain,
    pull_rows,
    push_chain,
    push_keep,
    push_params_keep,
    reverse_second,
    split_directions,
)
from .lowered import Block


class Residual(Layer):
    """``y = x + h · block(x)``, where ``block`` is ``layers`` applied in order.

    Parameters
    ----------
    *layers : Layer
        The block; it must map width ``n`` to width ``n``.
    h : float, default 1.0
        Step size (``h = 0.5`` in hessQuik's residual networks).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> block = ha.Residual(ha.Dense(np.eye(2)), ha.Tanh(), h=0.5)
    >>> ha.Sequential(block)(np.zeros((1, 2))).shape
    (1, 2)
    """

    def __init__(self, *layers: Layer, h: float = 1.0) -> None:
        if not layers:
            raise ValueError("Residual needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual: item {i} is {type(layer).__name__}, not a Layer")
            if layer.scalar_output:
                raise ValueError(f"Residual: layer {i} ({layer!r}) reduces to a scalar")
        self.layers = list(layers)
        self.h = float(h)
        self.in_width = next((l.in_width for l in self.layers if l.in_width is not None), None)
        if self.in_width is not None:
            self.out_width(self.in_width)
        self.has_curvature = any(layer.has_curvature for layer in self.layers)

    def out_width(self, n_in: int) -> int:
        n = n_in
        for i, layer in enumerate(self.layers):
            try:
                n = layer.out_width(n)
            except ValueError as exc:
                raise ValueError(f"residual layer {i} ({layer!r}) {exc}, got width {n}") from None
        if n != n_in:
            raise ValueError(f"residual block maps width {n_in} to {n}; it must preserve the width")
        return n_in

    def forward(self, x: Array) -> tuple[Array, Any]:
        steps, u = forward_chain(self.layers, x)
        # The third item remembers, for this call only, what the last adjoint ``g`` pulled
        # back gave: the engine pulls an adjoint back (``pull``, ``pull_hessian``) and then
        # needs the same ``g`` pulled again (``pull``, or ``push`` with the inner adjoints).
        return x + self.h * u, (x, steps, {})

    def _inner_adjoints(self, cache: Any, g: Array) -> list[Array]:
        _, steps, memo = cache
        if memo.get("g") is g and "inner" in memo:
            return memo["inner"]
        return adjoints(steps, self.h * g)

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list]:
        steps = cache[1]
        inner_g = None if g is None else self._inner_adjoints(cache, g)
        tu, factors = push_chain(steps, t, inner_g)
        return t + self.h * tu, factors

    def pull(self, cache: Any, g: Array) -> Array:
        _, steps, memo = cache
        if memo.get("g") is g and "pulled" in memo:
            return memo["pulled"]
        inner = adjoints(steps, self.h * g)
        first = steps[0]
        pulled = g + first.layer.pull(first.cache, inner[0])
        memo.clear()
        memo.update(g=g, inner=inner, pulled=pulled)
        return pulled

    def curvature_apply(self, cache: Any, g: Array, t: Array) -> Array | None:
        steps = cache[1]
        _, t_in = push_keep(steps, t)
        return pull_curvature_chain(steps, self._inner_adjoints(cache, g), t_in)

    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        # y = x + s·B(x):  H_x = H + s(H J_B + J_Bᵀ H) + s² J_Bᵀ H J_B + s Σ g ∇²B.
        steps = cache[1]
        s = self.h
        hb = None if h is None else (s * s) * h
        g_in, inner = pull_hessian_chain(steps, None if g is None else s * g, hb)
        if g is not None:  # the adjoint's own pull-back, for the ``pull`` that follows
            memo = cache[2]
            memo.clear()
            memo.update(g=g, pulled=g + g_in)
        if h is None:
            return inner
        xp = array_namespace(h)
        cross = s * pull_rows(steps, h)
        out = h + cross + xp.permute_dims(cross, (0, 1, 3, 2))
        return out if inner is None else out + inner

    # -- parameter directions ---------------------------------------------------------------------
    def push_params(self, cache: Any, t: Array, v: dict[str, Array]) -> Array:
        steps = cache[1]
        tu, _ = push_params_keep(steps, t, split_directions(v, len(steps)))
        return t + self.h * tu

    def curvature_apply_params(self, cache: Any, g: Array, t: Array, v: dict[str, Array]) -> Array | None:
        if g is None:
            return None
        steps = cache[1]
        v_steps = split_directions(v, len(steps))
        _, t_in = push_params_keep(steps, t, v_steps)
        gd, _ = reverse_second(steps, self._inner_adjoints(cache, g), None, t_in, v_steps)
        return gd

    def param_second(self, cache: Any, g: Array | None, gd: Array, t: Array, v: dict[str, Array]) -> dict[str, Array]:
        steps = cache[1]
        v_steps = split_directions(v, len(steps))
        _, t_in = push_params_keep(steps, t, v_steps)
        inner_g = [None] * len(steps) if g is None else self._inner_adjoints(cache, g)
        _, found = reverse_second(steps, inner_g, None if gd is None else self.h * gd, t_in, v_steps)
        return found

    def lower(self) -> tuple | None:
        body = []
        for layer in self.layers:
            steps = layer.lower()
            if steps is None:
                return None
            body.extend(steps)
        return (Block(self.h, tuple(body)),)

    def flops(self, n_in: int, k: int, m: int) -> tuple[float, float]:
        fwd, rev = (1 + k + m) * n_in, m * n_in * n_in
        for layer in self.layers:
            f, r = layer.flops(n_in, k, m)
            # the reverse pull also pulls the n rows of h through the block (cross term)
            fwd, rev = fwd + f, rev + r + m * n_in * layer.flops(n_in, 0, 0)[0]
        return fwd, rev

    # -- data and parameters ------------------------------------------------------------------
    def parameters(self) -> dict[str, Array]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers) for k, v in layer.parameters().items()}

    def arrays(self) -> list[tuple[str, Array]]:
        return [(f"{i}.{k}", v) for i, layer in enumerate(self.layers) for k, v in layer.arrays()]

    def map_arrays(self, fn: Callable[[str, Array], Array]) -> Layer:
        inner = [layer.map_arrays(_prefixed(fn, f"{i}.")) for i, layer in enumerate(self.layers)]
        if all(a is b for a, b in zip(inner, self.layers)):
            return self
        return rebuilt(self, Residual.__init__, *inner, h=self.h)

    def batch_slice(self, start: int, stop: int) -> Layer:
        inner = [layer.batch_slice(start, stop) for layer in self.layers]
        if all(a is b for a, b in zip(inner, self.layers)):
            return self
        return Residual(*inner, h=self.h)

    def check_batch(self, batch: int) -> None:
        for layer in self.layers:
            layer.check_batch(batch)

    def param_owner(self, cache: Any, name: str, y: Array) -> tuple[Layer, Any, str, Array, list]:
        x, steps = cache[0], cache[1]
        index, _, rest = name.partition(".")
        if not index.isdigit() or int(index) >= len(steps):
            raise KeyError(name)
        i = int(index)
        step = steps[i]
        owner, owner_cache, local, y_owner, down = step.layer.param_owner(step.cache, rest, step.y)
        # From the owner's output: the rest of the block, then the skip connection.
        return owner, owner_cache, local, y_owner, down + self.layers[i + 1 :] + [Skip(x, self.h)]

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Residual({inner}, h={self.h})"


def _prefixed(fn: Callable[[str, Array], Array], prefix: str) -> Callable[[str, Array], Array]:
    """``fn`` for an inner layer: its local names get the layer's index in front."""
    return lambda name, a: fn(prefix + name, a)


class Skip(Layer):
    """``y = x0 + h·u`` for a fixed per-sample ``x0``: a residual block seen from inside it.

    Used when differentiating with respect to a parameter of the block: the skip input is
    then a constant.
    """

    has_curvature = False

    def __init__(self, x0: Array, h: float) -> None:
        self.x0, self.h = x0, h

    def forward(self, x: Array) -> tuple[Array, Any]:
        return self.x0 + self.h * x, None

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list]:
        return self.h * t, []

    def pull(self, cache: Any, g: Array) -> Array:
        return self.h * g

    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        return None if h is None else (self.h * self.h) * h
