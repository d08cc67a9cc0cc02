"""Curvature in parameter space: Hessian and Gauss-Newton blocks and matrix-free products.

* Layer blocks (the Hessian backpropagation of Dangel, Harmeling and Hennig 2020, exact for
  these blocks): the Hessian ``H_F`` (or Gauss-Newton ``G_F``) of the rest of the model with
  respect to the owning layer's output, then the layer maps it onto its parameters; a dense
  layer, linear in ``W``, gives ``Σ_b H_F,b ⊗ x_b x_bᵀ`` as one GEMM over the batch.
* Products ``H v`` and ``G v`` for parameter directions ``v``: forward over reverse, with the
  directions injected at each layer (:meth:`Layer.push_params`) and the mixed
  input-parameter curvature of bilinear layers (:meth:`Layer.curvature_apply_params`).
"""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace, device
from ..layers.base import Layer, tangent_seed
from ..layers.chain import adjoints, forward_chain, push_params_keep, reverse_second, split_directions
from ..layers.losses import Sum
from .forward import forward_mode
from .plan import estimate, pick_mode
from .reverse import reverse_mode


def _scalar_chain(layers: list[Layer]) -> list[Layer]:
    """The model with its outputs summed (``Sum`` appended unless it already ends in one)."""
    return list(layers) if layers[-1].scalar_output else [*layers, Sum()]


def owner_blocks(
    layers: list[Layer], x: Any, index: int, name: str, pairs: list[tuple[str, str]], ggn: bool, per_sample: bool
) -> dict[tuple[str, str], Any]:
    """Blocks ``(a, b)`` for parameters of the layer that owns ``name`` (local names).

    ``pairs`` are local-name pairs of that owner. Hessian: ``H_F`` of the (output-summed)
    rest of the model at the owner's output; Gauss-Newton: ``G_F = Jᵀ H_loss J`` of the
    chain up to the loss.
    """
    steps, _ = forward_chain(layers[: index + 1], x)
    step = steps[index]
    owner, cache, _, y_owner, downstream = step.layer.param_owner(step.cache, name, step.y)
    rest = downstream + list(layers[index + 1 :])
    if ggn:
        h = gauss_newton_at(rest, y_owner)
    else:
        chain = _scalar_chain(rest) if rest else [Sum()]
        flops, _, _ = estimate(chain, y_owner.shape[1], True)
        # The owner's width is the number of tangents: wide owners pull Hessians back instead.
        run = forward_mode if pick_mode(flops) == "forward" else reverse_mode
        _, _, h = run(chain, y_owner, True)
    return {(a, b): owner.param_hessian(cache, a, h, per_sample, b) for a, b in pairs}


def top_level_blocks(
    layers: list[Layer], x: Any, pairs: dict[int, list[tuple[str, str]]], ggn: bool, per_sample: bool
) -> dict[tuple[int, str, str], Any]:
    """Blocks of the parameters of top-level layers, from one backward pass of Hessians.

    ``pairs[i]`` are local-name pairs of ``layers[i]``, a layer that owns its parameters
    (``param_owner`` gives itself and no downstream layers). The Hessian (Gauss-Newton:
    ``Jᵀ H_loss J``) with respect to each layer's output is pulled back once, through all
    layers above the lowest owner, and mapped onto the parameters as the pass goes by: the
    Hessian backpropagation of Dangel, Harmeling and Hennig, exact for these blocks.
    Returns ``{(i, a, b): block}``.
    """
    xp = array_namespace(x)
    batch = x.shape[0]
    chain = list(layers) if ggn else _scalar_chain(layers)
    steps, _ = forward_chain(chain, x)
    lowest = min(pairs)
    g = xp.ones((batch, 1, 1), dtype=x.dtype, device=device(x))
    h = None
    found: dict[tuple[int, str, str], Any] = {}
    for i in range(len(steps) - 1, lowest - 1, -1):
        step = steps[i]
        if i in pairs:
            n = step.y.shape[1]
            here = h if h is not None else xp.zeros((batch, 1, n, n), dtype=x.dtype, device=device(x))
            for a, b in pairs[i]:
                found[i, a, b] = step.layer.param_hessian(step.cache, a, here, per_sample, b)
        if i > lowest:
            # Gauss-Newton: the loss (the last step) contributes its Hessian, no layer below it
            # its curvature.
            h = step.layer.pull_hessian(step.cache, g if not ggn or i == len(steps) - 1 else None, h)
            g = step.layer.pull(step.cache, g)
    return found


def gauss_newton_at(chain: list[Layer], x: Any) -> Any:
    """``Jᵀ H_loss J`` ``(B, 1, d, d)`` for ``chain`` ending in a loss, at input ``x``."""
    xp = array_namespace(x)
    batch, d = x.shape
    steps, _ = forward_chain(chain, x)
    *body, loss = steps
    t = tangent_seed(xp, batch, d, x)
    for step in body:
        t, _ = step.layer.push(step.cache, t)
    ones = xp.ones((batch, 1, 1), dtype=x.dtype, device=device(x))
    hl_t = loss.layer.curvature_apply(loss.cache, ones, t)  # (B, 1, d, n_z) or None
    if hl_t is None:
        return xp.zeros((batch, 1, d, d), dtype=x.dtype, device=device(x))
    return xp.matmul(hl_t, xp.permute_dims(t, (1, 2, 0))[:, None, ...])


def parameter_products(layers: list[Layer], x: Any, v: dict[str, Any], ggn: bool) -> dict[str, Any]:
    """``H v`` (or ``G v``) summed over the batch, for directions ``v[name]`` ``(k, *shape)``.

    Names not in ``v`` are not perturbed; the result has every parameter name.
    """
    xp = array_namespace(x)
    batch = x.shape[0]
    chain = list(layers) if ggn else _scalar_chain(layers)
    steps, _ = forward_chain(chain, x)
    k = next(iter(v.values())).shape[0]
    v_steps = split_directions(v, len(steps))
    t0 = xp.zeros((k, batch, x.shape[1]), dtype=x.dtype, device=device(x))
    if ggn:  # H_loss applied to the tangents at the loss input, then pulled back linearly
        *body, loss = steps
        t, t_in = push_params_keep(body, t0, v_steps[: len(body)])
        ones = xp.ones((batch, 1, 1), dtype=x.dtype, device=device(x))
        gd = loss.layer.curvature_apply(loss.cache, ones, t)
        if gd is None:
            gd = xp.zeros((batch, 1, k, t.shape[-1]), dtype=x.dtype, device=device(x))
        _, found = reverse_second(body, [None] * len(body), gd, t_in, v_steps[: len(body)])
    else:
        g_out = adjoints(steps, xp.ones((batch, 1, 1), dtype=x.dtype, device=device(x)))
        _, t_in = push_params_keep(steps, t0, v_steps)
        _, found = reverse_second(steps, g_out, None, t_in, v_steps)
    return found
