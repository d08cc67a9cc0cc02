"""The layer contract: what every layer knows about itself, and nothing about the engine.

A layer maps one sample ``x`` of width ``n_in`` to ``y`` of width ``n_out``; every method works
on a whole block of samples at once. Shapes (``B`` samples, ``k`` tangent directions, ``m``
model outputs that adjoints belong to):

- ``x`` ``(B, n_in)``: the layer input;
- ``t`` ``(k, B, n_in)``: forward tangents ``dx/dseed``, direction-major: each of the ``k``
  directions is one ``(B, n)`` block;
- ``g`` ``(B, m, n_out)``: adjoints ``d out_i / dy``;
- ``h`` ``(B, m, n_out, n_out)``: Hessians ``d² out_i / dy²`` (``None`` is zero);
- ``(L, c, R)`` ``(k, B, r)``, ``(B, m, r)``, ``(k, B, r)``: curvature factors;
  ``tᵀ (Σ_j g_j ∇²y_j) t`` is ``Σ_r L[i, b, r] c[b, o, r] R[j, b, r]`` summed over the
  factor triples (for an elementwise layer ``L = R = t`` and ``c = g φ''``). A layer may
  instead give a :class:`Contracted` term ``(B, m, k, k)``, the sum itself (fused kernels
  do, for few directions).

Tangents are direction-major with the feature axis last so that a dense layer pushes all
``k·B`` of them with one GEMM, and scaling them by a per-sample ``(B, n)`` array (``φ'``) is
one flat elementwise pass instead of ``B·k`` short ones. The engine never looks at a layer's
type; it only calls the methods below.

This module is the contract only: :class:`Layer`, the :class:`Contracted` term its
:meth:`Layer.push` may return, and the helpers layers use to implement it
(:func:`tangent_seed`, :func:`sample_major`, :func:`rebuilt`). The algorithms that run a
chain of layers through the contract live in :mod:`hessarray.layers.chain`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .._backend import array_namespace, identity

Array = Any


def tangent_seed(xp: Any, batch: int, n: int, like: Array) -> Array:
    """The identity as tangents ``(n, B, n)``: direction ``i`` is ``e_i`` for every sample
    (a broadcast view, no copy)."""
    return xp.broadcast_to(identity(xp, n, like)[:, None, :], (n, batch, n))


def sample_major(t: Array) -> Array:
    """Tangents ``(k, B, n)`` as ``(B, k, n)`` (a view), for per-sample contractions."""
    return array_namespace(t).permute_dims(t, (1, 0, 2))


class Contracted(NamedTuple):
    """A curvature term already contracted: ``tᵀ (Σ_j g_j ∇²y_j) t`` as ``(B, m, k, k)``.

    :meth:`Layer.push` may return it among its factors in place of a triple ``(L, c, R)``
    when it has computed the sum itself (a fused kernel, for few directions ``k``).
    """

    term: Array


class Layer:
    """Base class and contract of a layer ``y = φ(x)`` applied to every sample of a batch.

    Subclasses override :meth:`forward`, :meth:`push`, :meth:`pull`, :meth:`pull_hessian`
    and, when they have curvature, :meth:`curvature_apply`; layers with parameters also
    :meth:`param_owner`, :meth:`param_gradient`, :meth:`param_hessian`,
    :meth:`push_params`, :meth:`curvature_apply_params` and :meth:`param_second`. Layers are
    immutable after construction: all per-call state lives in the ``cache`` that
    :meth:`forward` returns.
    """

    #: ``False`` when every second derivative of the layer vanishes (dense maps, ReLU, ...):
    #: the engine then needs no adjoints below it.
    has_curvature: bool = True
    #: ``True`` when the Jacobian is the same for every sample (:meth:`constant_jacobian`
    #: returns it): the planner then knows, from shapes alone, how many tangents follow.
    affine: bool = False
    #: Width the layer requires of its input, or ``None`` when any width will do.
    in_width: int | None = None
    #: ``True`` for layers that reduce a sample to one number (``Sum``, losses).
    scalar_output: bool = False
    #: ``True`` when :meth:`param_owner` gives the layer itself, with no downstream layers,
    #: for each of its parameters (``Dense``): layer blocks of the parameter Hessian then come
    #: from one backward pass shared by all such layers.
    owns_parameters: bool = False

    # -- shapes -------------------------------------------------------------------------
    def out_width(self, n_in: int) -> int:
        """Width of the output for an input of width ``n_in``; ``ValueError`` if it can't."""
        return n_in

    # -- first order ----------------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, Any]:
        """Evaluate the layer on ``x`` of shape ``(B, n_in)``.

        Returns ``(y, cache)``: the output ``(B, n_out)`` and whatever :meth:`push`,
        :meth:`pull` and :meth:`pull_hessian` need later (local derivatives, inputs).
        """
        raise NotImplementedError

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list[tuple[Array, Array, Array]]]:
        """Push tangents ``t`` ``(k, B, n_in) -> (k, B, n_out)``; with adjoints, the curvature.

        Parameters
        ----------
        cache : object
            From :meth:`forward`.
        t : array, shape (k, B, n_in)
            Tangents entering the layer.
        g : array, shape (B, m, n_out), optional
            Adjoints at the layer output. When given, also return the factors of
            ``tᵀ (Σ_j g_j ∇²y_j) t``: triples ``(L, c, R)`` of shapes ``(k, B, r)``,
            ``(B, m, r)`` and ``(k, B, r)`` with ``Σ_r L[i, b, r] c[b, o, r] R[j, b, r]``
            summing to it. An elementwise layer returns ``[(t, g φ'', t)]``, so no ``(n, n)``
            diagonal, let alone an ``(n, n, n)`` tensor, is formed, and the engine can take
            only the diagonal or the trace at ``O(k r)`` cost. A layer without curvature
            returns ``[]``.
        """
        raise NotImplementedError

    def constant_jacobian(self, cache: Any) -> Array | None:
        """The Jacobian ``(n_in, n_out)`` when it is the same for every sample, else ``None``.

        Affine layers return it (a dense layer's is ``Wᵀ``); such a layer has no curvature.
        While every layer so far has one, the engine keeps the tangents as one ``(d, n)``
        matrix for all samples instead of ``(d, B, n)``, and contracts the next layer's
        curvature with it in one matrix product over the samples.
        """
        return None

    def pull(self, cache: Any, g: Array) -> Array:
        """Vector-Jacobian products: ``(B, M, n_out) -> (B, M, n_in)``, ``g ∂y/∂x``."""
        raise NotImplementedError

    # -- second order ---------------------------------------------------------------------
    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        """``Jᵀ h J + Σ_j g_j ∇²y_j``: ``(B, m, n_out, n_out) -> (B, m, n_in, n_in)``.

        ``g`` are the adjoints at the layer output (``None``: leave out the curvature term,
        as the Gauss-Newton matrix does). ``h`` may be ``None`` (zero); the result may be
        ``None`` only if it is zero. It must be a new array or ``h`` itself, never one the
        layer keeps: the reverse mode symmetrizes the final Hessian in place on NumPy.
        """
        raise NotImplementedError

    def curvature_apply(self, cache: Any, g: Array, t: Array) -> Array | None:
        """``(Σ_j g_j ∇²y_j) t``: the curvature applied to tangents ``t`` ``(k, B, n_in)``.

        ``g`` are the adjoints ``(B, m, n_out)`` at the output; returns ``(B, m, k, n_in)``,
        or ``None`` for a layer without curvature. Used by Hessian-vector products
        (forward over reverse) at cost ``O(n k)`` per sample for an elementwise layer.
        """
        if self.has_curvature:
            raise NotImplementedError(f"{type(self).__name__} has curvature but no curvature_apply")
        return None

    # -- parameter directions (parameter-space products) ---------------------------------------
    # ``v`` maps this layer's local parameter names to directions of shape ``(k, *shape)``,
    # the same for every sample; names not in ``v`` are not perturbed.

    def push_params(self, cache: Any, t: Array, v: dict[str, Array]) -> Array:
        """Tangents of the output when the input moves by ``t`` and the parameters by ``v``."""
        return self.push(cache, t)[0]

    def curvature_apply_params(self, cache: Any, g: Array, t: Array, v: dict[str, Array]) -> Array | None:
        """``Σ_j g_j (∇²_xx y_j t + ∇²_xθ y_j v)``: ``(B, m, k, n_in)`` or ``None`` if zero.

        Adds to :meth:`curvature_apply` the mixed input-parameter curvature (a dense layer is
        bilinear in ``W`` and ``x``).
        """
        return None if g is None else self.curvature_apply(cache, g, t)

    def param_second(self, cache: Any, g: Array | None, gd: Array, t: Array, v: dict[str, Array]) -> dict[str, Array]:
        """Directional derivative of the parameter gradient, summed over samples and outputs.

        ``g`` ``(B, m, n_out)`` are the adjoints at the output (``None``: zero, as in the
        Gauss-Newton product), ``gd`` ``(B, m, k, n_out)`` their derivatives along the
        direction, ``t`` ``(k, B, n_in)`` the input tangents. Returns, per local parameter
        name, ``(k, *shape)``.
        """
        return {}

    # -- compiled executors -----------------------------------------------------------------
    def lower(self) -> tuple | None:
        """This layer as steps of :mod:`hessarray.layers.lowered` (a tuple), for executors that
        compile the whole network; ``None`` (the default) where it cannot be expressed by them,
        and then the model runs on the portable executor."""
        return None

    # -- planning -------------------------------------------------------------------------
    def flops(self, n_in: int, k: int, m: int) -> tuple[float, float]:
        """Multiply-adds per sample for (forward mode with ``k`` tangents, reverse mode).

        Forward mode: value, ``k`` tangents, ``m`` adjoints, and the curvature factors.
        Reverse mode: value, ``m`` adjoints and the ``m`` Hessian pulls.
        """
        n = self.out_width(n_in)
        curv = m * k * k * n if self.has_curvature else 0
        return ((1 + k + m) * n + curv, (1 + m) * n + m * n * n)

    # -- data ---------------------------------------------------------------------------------
    def arrays(self) -> list[tuple[str, Array]]:
        """Every array the layer holds, with names, for backend and device checks."""
        return list(self.parameters().items())

    def parameters(self) -> dict[str, Array]:
        """Differentiable parameters by local name (``"weight"``, ``"0.bias"``, ...)."""
        return {}

    def map_arrays(self, fn: Callable[[str, Array], Array]) -> Layer:
        """The same layer with each array of :meth:`arrays` replaced by ``fn(local_name, array)``.

        Layers are immutable, so this builds a new one (``self`` itself when the layer holds no
        arrays). :meth:`hessarray.Sequential.map_arrays` and ``Sequential.to`` rely on it; a
        layer that holds arrays must override it (see :func:`rebuilt`).
        """
        if not self.arrays():
            return self
        raise NotImplementedError(
            f"{type(self).__name__} holds arrays ({', '.join(n for n, _ in self.arrays())}) "
            f"but does not implement map_arrays"
        )

    def batch_slice(self, start: int, stop: int) -> Layer:
        """The layer for samples ``start:stop`` (layers holding per-sample targets slice them)."""
        return self

    def check_batch(self, batch: int) -> None:
        """Raise ``ValueError`` if per-sample data does not match ``batch`` samples."""

    # -- parameters ---------------------------------------------------------------------
    def param_owner(self, cache: Any, name: str, y: Array) -> tuple[Layer, Any, str, Array, list]:
        """Find the layer that owns parameter ``name`` (a local name).

        Returns ``(owner, owner_cache, owner_local_name, owner_output, downstream)`` where
        ``downstream`` lists the layers that map the owner's output to this layer's output
        (empty when this layer is the owner).
        """
        raise KeyError(name)

    def param_gradient(self, cache: Any, name: str, g: Array, per_sample: bool) -> Array:
        """Adjoints ``g`` of shape ``(B, m, n_out)`` mapped onto parameter ``name``.

        Returns ``(B, m, *shape)`` if ``per_sample``, else the sum over ``B`` and ``m``.
        """
        raise KeyError(name)

    def param_hessian(self, cache: Any, name: str, h: Array, per_sample: bool, other: str | None = None) -> Array:
        """Exact Hessian block of the outputs for parameters ``name`` and ``other``.

        ``h`` is ``(B, m, n_out, n_out)``, the Hessian with respect to this layer's output;
        ``other`` (default ``name``) is another parameter of the same layer. Layers linear in
        their parameters (all of the built-in ones) have no second term. Returns
        ``(B, m, *shape, *other_shape)`` if ``per_sample``, else the sum over ``B`` and
        ``m``: ``(*shape, *other_shape)``.
        """
        raise KeyError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def rebuilt(layer: Layer, init: Callable[..., None], *args: Any, **kwargs: Any) -> Layer:
    """A copy of ``layer`` (same class and attributes) on which ``init(copy, *args, **kwargs)``
    has run again: a layer with new arrays, checked as the constructor checks them, which keeps
    what a subclass added."""
    clone = object.__new__(type(layer))
    clone.__dict__.update(layer.__dict__)
    init(clone, *args, **kwargs)
    return clone


__all__ = [
    "Array",
    "Contracted",
    "Layer",
    "rebuilt",
    "sample_major",
    "tangent_seed",
]
