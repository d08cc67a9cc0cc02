"""Chain algorithms: run a list of layers through the layer contract of :mod:`hessarray.layers.base`.

Composite layers (:class:`~hessarray.layers.residual.Residual`) and the engine both walk lists
of evaluated :class:`Step` entries; the functions here are the one place that does so, and they call
nothing but the :class:`~hessarray.layers.base.Layer` methods.

- Evaluation: :func:`forward_chain` (:class:`hessarray.Sequential`, every engine mode).
- Adjoints at each step's output: :func:`adjoints` (:mod:`hessarray.engine.forward`,
  :mod:`hessarray.engine.curvature`, :mod:`hessarray.engine.parameter_space`).
- Reverse mode (:mod:`hessarray.engine.reverse`, :mod:`hessarray.testing`): :func:`pull_chain`,
  :func:`pull_hessian_chain`.
- Hessian-vector products, forward over reverse (:mod:`hessarray.engine.curvature`):
  :func:`push_keep`, :func:`pull_curvature_chain`.
- Parameter-space products (:mod:`hessarray.engine.parameter_space`): :func:`split_directions`,
  :func:`push_params_keep`, :func:`reverse_second`.
- Inside a residual block only: :func:`push_chain` (forward-mode tangents and curvature
  factors of the block) and :func:`pull_rows` (Hessian rows pulled through the block).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from .._backend import array_namespace
from .base import Array, Layer


class Step(NamedTuple):
    """One evaluated layer: the layer, what its forward pass kept, and its output."""

    layer: Layer
    cache: Any
    y: Array


def forward_chain(layers: list[Layer], x: Array) -> tuple[list[Step], Array]:
    """Run ``layers`` on ``x``; return the evaluated steps and the output."""
    steps = []
    for layer in layers:
        y, cache = layer.forward(x)
        steps.append(Step(layer, cache, y))
        x = y
    return steps, x


def push_chain(
    steps: list[Step], t: Array, g_out: list[Array | None] | None = None
) -> tuple[Array, list[tuple[Array, Array, Array]]]:
    """Push tangents through ``steps``; with the adjoints at each step's output, also
    collect every step's curvature factors."""
    factors: list[tuple[Array, Array, Array]] = []
    for i, step in enumerate(steps):
        t, f = step.layer.push(step.cache, t, None if g_out is None else g_out[i])
        factors.extend(f)
    return t, factors


def pull_chain(steps: list[Step], g: Array) -> Array:
    """Pull adjoints ``g`` back through ``steps``: ``g ∂out/∂in``."""
    for step in reversed(steps):
        g = step.layer.pull(step.cache, g)
    return g


def adjoints(steps: list[Step], g: Array) -> list[Array]:
    """The adjoints at each step's output (in step order), for ``g`` at the last output.

    Stops before pulling through the first step: its input adjoint is not needed.
    """
    at_output = [g]
    for step in reversed(steps[1:]):
        at_output.append(step.layer.pull(step.cache, at_output[-1]))
    at_output.reverse()
    return at_output


def push_keep(steps: list[Step], t: Array) -> tuple[Array, list[Array]]:
    """Push tangents through ``steps``; also return the tangents entering each step."""
    entering = []
    for step in steps:
        entering.append(t)
        t, _ = step.layer.push(step.cache, t)
    return t, entering


def pull_curvature_chain(steps: list[Step], g_out: list[Array], t_in: list[Array]) -> Array | None:
    """Second-order adjoints ``d/dε [g ∂out/∂x](x + ε t)`` for tangents ``t`` at the input.

    ``g_out`` are the first-order adjoints ``(B, m, n)`` at each step's output, ``t_in`` the
    tangents ``(k, B, n)`` entering each step. Returns ``(B, m, k, d)``: ``H t`` for each of
    the ``m`` outputs (``None`` if the chain has no curvature).
    """
    gd = None
    for step, g, t in zip(reversed(steps), reversed(g_out), reversed(t_in)):
        if gd is not None:
            B, m, k, n = gd.shape
            xp = array_namespace(gd)
            gd = step.layer.pull(step.cache, xp.reshape(gd, (B, m * k, n)))
            gd = xp.reshape(gd, (B, m, k, gd.shape[-1]))
        term = step.layer.curvature_apply(step.cache, g, t)
        if term is not None:
            gd = term if gd is None else gd + term
    return gd


def reverse_second(
    steps: list[Step],
    g_out: list[Array | None],
    gd: Array | None,
    t_in: list[Array],
    v_steps: list[dict[str, Array]],
) -> tuple[Array | None, dict[str, Array]]:
    """Second-order reverse pass with parameter directions (forward over reverse).

    ``g_out`` are the adjoints at each step's output (``None`` entries: zero), ``gd`` the
    derivative ``(B, m, k, n)`` of the adjoint at the last output along the direction
    (``None``: zero), ``t_in`` the tangents entering each step and ``v_steps`` each step's
    parameter directions. Returns the derivative of the input adjoint and, keyed
    ``"{step}.{name}"``, each parameter's ``(k, *shape)`` result.
    """
    found: dict[str, Array] = {}
    for i in range(len(steps) - 1, -1, -1):
        step, g, t, v = steps[i], g_out[i], t_in[i], v_steps[i]
        if gd is not None or g is not None:
            for name, value in step.layer.param_second(step.cache, g, gd, t, v).items():
                found[f"{i}.{name}"] = value
        if gd is not None:
            B, m, k, n = gd.shape
            xp = array_namespace(gd)
            pulled = step.layer.pull(step.cache, xp.reshape(gd, (B, m * k, n)))
            gd = xp.reshape(pulled, (B, m, k, pulled.shape[-1]))
        term = step.layer.curvature_apply_params(step.cache, g, t, v)
        if term is not None:
            gd = term if gd is None else gd + term
    return gd, found


def push_params_keep(steps: list[Step], t: Array, v_steps: list[dict[str, Array]]) -> tuple[Array, list[Array]]:
    """Push input tangents and parameter directions; keep the tangents entering each step."""
    entering = []
    for step, v in zip(steps, v_steps):
        entering.append(t)
        t = step.layer.push_params(step.cache, t, v)
    return t, entering


def split_directions(v: dict[str, Array], count: int) -> list[dict[str, Array]]:
    """``{"2.0.weight": a}`` -> ``[{}, {}, {"0.weight": a}, ...]``: directions per step."""
    per_step: list[dict[str, Array]] = [{} for _ in range(count)]
    for name, value in v.items():
        index, _, rest = name.partition(".")
        per_step[int(index)][rest] = value
    return per_step


def pull_hessian_chain(steps: list[Step], g: Array | None, h: Array | None) -> tuple[Array, Array | None]:
    """Reverse-mode second order: pull ``(g, h)`` back through ``steps``.

    ``g=None`` drops every curvature term: ``h`` is then pulled as ``Jᵀ h J`` (Gauss-Newton).
    """
    for step in reversed(steps):
        h = step.layer.pull_hessian(step.cache, g, h)
        if g is not None:
            g = step.layer.pull(step.cache, g)
    return g, h


def pull_rows(steps: list[Step], h: Array) -> Array:
    """``h @ J`` for ``h`` of shape ``(B, m, p, n_out)``: each row pulled as an adjoint."""
    B, m, p, n = h.shape
    xp = array_namespace(h)
    out = pull_chain(steps, xp.reshape(h, (B, m * p, n)))
    return xp.reshape(out, (B, m, p, out.shape[-1]))


__all__ = [
    "Step",
    "adjoints",
    "forward_chain",
    "pull_chain",
    "pull_curvature_chain",
    "pull_hessian_chain",
    "pull_rows",
    "push_chain",
    "push_keep",
    "push_params_keep",
    "reverse_second",
    "split_directions",
]
