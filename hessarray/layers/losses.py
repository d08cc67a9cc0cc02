"""Layers that end a model with one number per sample: ``Sum`` and losses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._backend import array_namespace, device, diag_embed, is_array_api_obj
from .base import Array, Layer, rebuilt, sample_major
from .lowered import SquaredError, Total


class Reduction(Layer):
    """A map of a sample to one number, ``y = ℓ(x)``, with gradient ``∇ℓ`` and Hessian.

    Subclasses give :meth:`evaluate`, returning ``ℓ`` of shape ``(B,)``, the gradient
    ``(B, n)`` and a description of the Hessian that :meth:`curvature` and
    :meth:`pull_hessian` read.
    """

    scalar_output = True

    def out_width(self, n_in: int) -> int:
        return 1

    def evaluate(self, xp: Any, x: Array) -> tuple[Array, Array, Any]:
        raise NotImplementedError

    def forward(self, x: Array) -> tuple[Array, Any]:
        value, grad, curv = self.evaluate(array_namespace(x), x)
        return value[:, None], (grad, curv)

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list]:
        grad, curv = cache
        t_out = array_namespace(t).vecdot(t, grad)[..., None]  # (k, B, 1)
        if g is None or not self.has_curvature:
            return t_out, []
        return t_out, self.curvature(curv, t, g[:, :, 0])

    def curvature(self, curv: Any, t: Array, c: Array) -> list[tuple[Array, Array, Array]]:
        """Factor triples of ``tᵀ (c ∇²ℓ) t`` for tangents ``t`` ``(k, B, n)`` and per-output
        weights ``c`` of shape ``(B, m)``."""
        raise NotImplementedError

    def curvature_apply(self, cache: Any, g: Array, t: Array) -> Array | None:
        if not self.has_curvature:
            return None
        return self.hessian_apply(cache[1], g[:, :, 0], sample_major(t))

    def hessian_apply(self, curv: Any, c: Array, t: Array) -> Array:
        """``c ∇²ℓ t``: ``(B, m)`` weights and ``(B, k, n)`` tangents give ``(B, m, k, n)``."""
        raise NotImplementedError

    def pull(self, cache: Any, g: Array) -> Array:
        return g * cache[0][:, None, :]  # (B, M, 1) * (B, 1, n)

    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        grad = cache[0]
        out = self.hessian(cache, g[:, :, 0]) if self.has_curvature and g is not None else None
        if h is not None:
            jhj = h * (grad[:, None, :, None] * grad[:, None, None, :])
            out = jhj if out is None else out + jhj
        return out

    def hessian(self, cache: Any, c: Array) -> Array:
        """``Σ c ∇²ℓ`` per sample and output, ``(B, m) -> (B, m, n, n)``."""
        raise NotImplementedError

    def flops(self, n_in: int, k: int, m: int) -> tuple[float, float]:
        curv = m * k * k * n_in if self.has_curvature else 0
        return ((2 + k + m) * n_in + curv, (2 + m) * n_in + m * n_in * n_in)


class Sum(Reduction):
    """``y = Σ_i x_i``: the sum of a sample's features (no curvature).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> ha.Sequential(ha.Square(), ha.Sum())(np.array([[1.0, 2.0]]))
    array([5.])
    """

    has_curvature = False

    def evaluate(self, xp, x):
        return xp.sum(x, axis=1), xp.ones_like(x), None

    def lower(self) -> tuple:
        return (Total(),)


class _Targeted(Reduction):
    """A loss holding per-sample targets, sliced with the batch."""

    target: Array

    def arrays(self) -> list[tuple[str, Array]]:
        return [("target", self.target)]

    def batch_slice(self, start: int, stop: int) -> Layer:
        if self.target.ndim < self._sample_ndim + 1:
            return self  # one target shared by all samples
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.target = self.target[start:stop, ...]
        return clone

    def check_batch(self, batch: int) -> None:
        if self.target.ndim == self._sample_ndim + 1 and self.target.shape[0] != batch:
            raise ValueError(
                f"{type(self).__name__}: target has {self.target.shape[0]} samples "
                f"(shape {tuple(self.target.shape)}) but x has {batch}"
            )


class MSELoss(_Targeted):
    """Mean squared error over features, ``mean_i (x_i - target_i)²`` per sample.

    Parameters
    ----------
    target : array, shape (batch, m) or (m,)
        One target row per sample, or one row shared by all samples.
    """

    _sample_ndim = 1

    def __init__(self, target: Array) -> None:
        if not is_array_api_obj(target) or target.ndim not in (1, 2):
            raise ValueError(
                f"MSELoss: target must have shape (batch, m) or (m,), got {getattr(target, 'shape', target)}"
            )
        self.target = target
        self.in_width = target.shape[-1]

    def map_arrays(self, fn: Callable[[str, Array], Array]) -> Layer:
        return rebuilt(self, MSELoss.__init__, fn("target", self.target))

    def out_width(self, n_in: int) -> int:
        if n_in != self.in_width:
            raise ValueError(f"expects input width {self.in_width} (target shape {tuple(self.target.shape)})")
        return 1

    def evaluate(self, xp, x):
        r = x - xp.astype(self.target, x.dtype)
        n = x.shape[1]
        return xp.mean(r * r, axis=1), (2.0 / n) * r, 2.0 / n

    def lower(self) -> tuple:
        return (SquaredError(self.target),)

    def curvature(self, curv, t, c):
        xp = array_namespace(t)
        k, B, n = t.shape
        c = xp.broadcast_to((curv * c)[:, :, None], (B, c.shape[1], n))  # the Hessian is curv·I
        return [(t, c, t)]

    def hessian_apply(self, curv, c, t):
        return (curv * c)[:, :, None, None] * t[:, None, ...]

    def hessian(self, cache, c):
        grad, scale = cache
        xp = array_namespace(c)
        return (scale * c)[:, :, None, None] * xp.eye(grad.shape[1], dtype=c.dtype, device=device(c))

    def __repr__(self):
        return f"MSELoss(target {tuple(self.target.shape)})"


class SoftmaxCrossEntropy(_Targeted):
    """Cross-entropy of ``softmax(x)`` against labels: ``-Σ_i t_i log softmax(x)_i``.

    Its Hessian, ``(Σ t)(diag p - p pᵀ)`` with ``p = softmax(x)``, is not diagonal. In forward
    mode it is never formed: ``Tᵀ(diag p - p pᵀ)T = Σ_i p_i u_i u_iᵀ`` with the tangents
    centred on their ``p``-mean, ``u_i = T_i - Σ_j p_j T_j``. That is a sum of positive
    semidefinite terms; the two halves ``Tᵀ diag(p) T`` and ``(Tᵀp)(pᵀT)`` would cancel
    catastrophically for large tangents and a saturated softmax.

    Parameters
    ----------
    labels : array
        Integer class indices of shape (batch,) (or a 0-d index for one sample), or one-hot /
        probability rows of shape (batch, m) or (m,).
    """

    def __init__(self, labels: Array) -> None:
        if not is_array_api_obj(labels):
            raise TypeError(f"SoftmaxCrossEntropy: labels must be an array, got {type(labels).__name__}")
        xp = array_namespace(labels)
        self.integer = xp.isdtype(labels.dtype, "integral")
        if self.integer and labels.ndim > 1 or not self.integer and labels.ndim not in (1, 2):
            raise ValueError(
                f"SoftmaxCrossEntropy: labels must be integers of shape (batch,) or rows of shape "
                f"(batch, m), got dtype {labels.dtype} and shape {tuple(labels.shape)}"
            )
        self.target = labels
        self._sample_ndim = 0 if self.integer else 1
        self.in_width = None if self.integer else labels.shape[-1]

    def map_arrays(self, fn: Callable[[str, Array], Array]) -> Layer:
        return rebuilt(self, SoftmaxCrossEntropy.__init__, fn("target", self.target))

    def out_width(self, n_in: int) -> int:
        if self.in_width is not None and n_in != self.in_width:
            raise ValueError(f"expects input width {self.in_width} (labels shape {tuple(self.target.shape)})")
        return 1

    def _rows(self, xp, x):
        if not self.integer:
            rows = xp.astype(self.target, x.dtype)
            return rows if rows.ndim == 2 else xp.broadcast_to(rows[None, :], x.shape)
        labels = self.target
        if labels.ndim == 0:
            labels = labels[None]
        classes = xp.arange(x.shape[1], dtype=labels.dtype, device=device(labels))
        return xp.astype(labels[:, None] == classes, x.dtype)

    def evaluate(self, xp, x):
        t = self._rows(xp, x)
        shift = xp.max(x, axis=1, keepdims=True)
        e = xp.exp(x - shift)
        z = xp.sum(e, axis=1, keepdims=True)
        p = e / z
        lse = shift + xp.log(z)
        mass = xp.sum(t, axis=1)
        value = mass * lse[:, 0] - xp.sum(t * x, axis=1)
        top = xp.astype(x == shift, x.dtype)  # the largest logit (shared between ties)
        return value, mass[:, None] * p - t, (p, mass, top / xp.sum(top, axis=1, keepdims=True))

    @staticmethod
    def _centred(xp, t, p, top):
        """``t_i - Σ_j p_j t_j`` for tangents ``t`` of shape ``(..., m)`` (``p``, ``top``
        broadcast against them): taken relative to the largest logit's tangent ``r``, as
        ``(t_i - r) - Σ_j p_j (t_j - r)``, so that a saturated softmax (``p`` nearly one-hot)
        loses no digits to the difference of two nearly equal numbers."""
        d = t - xp.sum(t * top, axis=-1, keepdims=True)
        return d - xp.sum(d * p, axis=-1, keepdims=True)

    def curvature(self, curv, t, c):
        p, mass, top = curv
        xp = array_namespace(t)
        c = c * mass[:, None]  # (B, m)
        u = self._centred(xp, t, p, top)  # (k, B, m): centred tangents (see the class doc)
        return [(u, c[:, :, None] * p[:, None, :], u)]

    def hessian_apply(self, curv, c, t):
        p, mass, top = curv
        xp = array_namespace(t)
        s = (c * mass[:, None])[:, :, None, None]
        u = self._centred(xp, t, p[:, None, :], top[:, None, :])  # (B, k, m)
        return s * (u * p[:, None, :])[:, None, ...]

    def hessian(self, cache, c):
        _, (p, mass, _) = cache
        xp = array_namespace(c)
        s = (c * mass[:, None])[:, :, None, None]
        off = 1.0 - xp.eye(p.shape[1], dtype=p.dtype, device=device(p))
        # The diagonal p_a (1 - p_a) with 1 - p_a summed as Σ_{j≠a} p_j: for a saturated
        # softmax, 1 - p_a computed as a difference would keep no correct digit.
        rest = xp.matmul(p, off)
        h = diag_embed(xp, p * rest) - (p[:, :, None] * p[:, None, :]) * off
        return s * h[:, None, ...]

    def __repr__(self):
        return f"SoftmaxCrossEntropy(labels {tuple(self.target.shape)})"
