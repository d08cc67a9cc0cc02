"""Dense (affine) layer ``y = x @ Wᵀ + b``: no curvature, one GEMM per pass."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy

from .. import _delegation
from .._backend import array_namespace, device, is_array_api_obj, is_lazy, matmul_last
from .base import Array, Layer, rebuilt
from .lowered import Affine


def cast_like(xp: Any, a: Array, x: Array) -> Array:
    """``a`` in the dtype of ``x`` (no copy when it already is)."""
    return a if a.dtype == x.dtype else xp.astype(a, x.dtype)


class Dense(Layer):
    """Affine layer ``y = x @ W.T + b``, with ``W`` of shape ``(out, in)`` as in ``torch.nn.Linear``.

    Parameters
    ----------
    W : array, shape (out, in)
        Weight matrix, any array-API array (NumPy, CuPy, torch, JAX, Dask, ...).
    b : array, shape (out,) or (out, 1), optional
        Bias; the column shape of the notebook is accepted and kept for reporting
        parameter derivatives in the user's shape.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> layer = ha.Dense(np.ones((2, 3)), np.zeros(2))
    >>> ha.Sequential(layer)(np.ones((4, 3))).shape
    (4, 2)
    """

    has_curvature = False
    affine = True
    owns_parameters = True

    def __init__(self, W: Array, b: Array | None = None) -> None:
        if not is_array_api_obj(W) or W.ndim != 2:
            raise ValueError(f"Dense: W must be a 2-D array of shape (out, in), got {_shape(W)}")
        xp = array_namespace(W)
        if not xp.isdtype(W.dtype, "real floating"):
            raise TypeError(f"Dense: W must be real floating, got {W.dtype}")
        out = W.shape[0]
        if b is not None:
            if not is_array_api_obj(b) or tuple(b.shape) not in ((out,), (out, 1)):
                raise ValueError(
                    f"Dense: b must have shape ({out},) or ({out}, 1) to match W of shape "
                    f"{tuple(W.shape)}, got {_shape(b)}"
                )
            if not xp.isdtype(b.dtype, "real floating"):
                raise TypeError(f"Dense: b must be real floating, got {b.dtype}")
        self.weight = W
        self.bias = b
        self.in_width = W.shape[1]
        self._b = None if b is None else xp.reshape(b, (out,))

    def out_width(self, n_in: int) -> int:
        if n_in != self.in_width:
            raise ValueError(f"expects input width {self.in_width} (weight shape {tuple(self.weight.shape)})")
        return self.weight.shape[0]

    def parameters(self) -> dict[str, Array]:
        params = {"weight": self.weight}
        if self.bias is not None:
            params["bias"] = self.bias
        return params

    def map_arrays(self, fn: Callable[[str, Array], Array]) -> Layer:
        weight = fn("weight", self.weight)
        return rebuilt(self, Dense.__init__, weight, None if self.bias is None else fn("bias", self.bias))

    # -- first order ----------------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, Any]:
        fast = _delegation.dense_forward(x, self.weight, self._b)  # NumPy: small blocks are call-bound
        if fast is not None:
            return fast
        w = self.weight
        xp = array_namespace(x)
        w = cast_like(xp, w, x)
        y = xp.matmul(x, w.T)
        if self._b is not None:
            y = y + cast_like(xp, self._b, x)
        return y, (x, w, w.T)

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list]:
        return matmul_last(array_namespace(t), t, cache[2]), []

    def constant_jacobian(self, cache: Any) -> Array:
        return cache[2]

    def pull(self, cache: Any, g: Array) -> Array:
        w = cache[1]
        return matmul_last(array_namespace(g), g, w)

    # -- second order ---------------------------------------------------------------------
    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        if h is None:
            return None
        w = cache[1]
        xp = array_namespace(h)
        # Wᵀ h W as two GEMMs over all samples: a = h W, then aᵀ W (= Wᵀ h W, h symmetric).
        a = matmul_last(xp, h, w)
        return matmul_last(xp, xp.permute_dims(a, (0, 1, 3, 2)), w)

    def lower(self) -> tuple:
        return (Affine(self.weight, self._b),)

    def flops(self, n_in: int, k: int, m: int) -> tuple[float, float]:
        o, i = self.weight.shape
        return ((1 + k + m) * o * i, (1 + m) * o * i + m * (o * o * i + i * i * o))

    # -- parameter directions ---------------------------------------------------------------------
    def _directions(self, xp: Any, v: dict[str, Array], like: Array) -> tuple[Array | None, Array | None]:
        """``v`` as ``(k, o, i)`` weight and ``(k, o)`` bias directions (``None`` if absent)."""
        o, i = self.weight.shape
        vw, vb = v.get("weight"), v.get("bias")
        vw = None if vw is None else cast_like(xp, vw, like)
        vb = None if vb is None else xp.reshape(cast_like(xp, vb, like), (vb.shape[0], o))
        return vw, vb

    def push_params(self, cache: Any, t: Array, v: dict[str, Array]) -> Array:
        x, w = cache[0], cache[1]
        xp = array_namespace(t)
        out = matmul_last(xp, t, w.T)
        vw, vb = self._directions(xp, v, x)
        k, B = t.shape[0], t.shape[1]
        o = w.shape[0]
        if vw is not None:  # V x for each direction: one GEMM (B, i) @ (i, k·o)
            vx = xp.matmul(x, xp.reshape(vw, (k * o, vw.shape[-1])).T)
            out = out + xp.permute_dims(xp.reshape(vx, (B, k, o)), (1, 0, 2))
        if vb is not None:
            out = out + vb[:, None, :]
        return out

    def curvature_apply_params(self, cache: Any, g: Array, t: Array, v: dict[str, Array]) -> Array | None:
        # y = W x + b is bilinear in (W, x): Σ_j g_j ∂²y_j/∂x∂W · V = g V.
        if g is None or "weight" not in v:
            return None
        x = cache[0]
        xp = array_namespace(g)
        vw, _ = self._directions(xp, v, x)
        k, o, i = vw.shape
        B, m, _ = g.shape
        gv = matmul_last(xp, g, xp.reshape(xp.permute_dims(vw, (1, 0, 2)), (o, k * i)))
        return xp.reshape(gv, (B, m, k, i))

    def param_second(self, cache: Any, g: Array | None, gd: Array, t: Array, v: dict[str, Array]) -> dict[str, Array]:
        x = cache[0]
        xp = array_namespace(t)
        k, B, i = t.shape
        o = self.weight.shape[0]
        out: dict[str, Array] = {}
        gds = None if gd is None else xp.sum(gd, axis=1)  # (B, k, o)
        weight = None
        if gds is not None:  # Σ_b ġ ⊗ x
            flat = xp.reshape(xp.permute_dims(gds, (1, 2, 0)), (k * o, B))
            weight = xp.reshape(xp.matmul(flat, x), (k, o, i))
        if g is not None:  # Σ_b g ⊗ ẋ
            gs = xp.sum(g, axis=1)  # (B, o)
            gt = xp.matmul(gs.T[None, ...], t)  # (k, o, i): one (o, B) @ (B, i) per direction
            weight = gt if weight is None else weight + gt
        if weight is not None:
            out["weight"] = weight
        if self.bias is not None and gds is not None:
            out["bias"] = xp.reshape(xp.sum(gds, axis=0), (k, *self.bias.shape))
        elif self.bias is not None:
            out["bias"] = xp.zeros((k, *self.bias.shape), dtype=t.dtype, device=device(t))
        if "weight" not in out:
            out["weight"] = xp.zeros((k, o, i), dtype=t.dtype, device=device(t))
        return out

    # -- parameters -----------------------------------------------------------------------
    def param_owner(self, cache: Any, name: str, y: Array) -> tuple[Layer, Any, str, Array, list]:
        if name not in self.parameters():
            raise KeyError(name)
        return self, cache, name, y, []

    def param_gradient(self, cache: Any, name: str, g: Array, per_sample: bool) -> Array:
        x = cache[0]
        xp = array_namespace(g)
        B, m, o = g.shape
        if name == "bias":
            if per_sample:
                return xp.reshape(g, (B, m, *self.bias.shape))
            return xp.reshape(xp.sum(g, axis=(0, 1)), tuple(self.bias.shape))
        if per_sample:
            return g[:, :, :, None] * x[:, None, None, :]
        # Σ_b g_b x_bᵀ as one GEMM over the batch.
        return xp.matmul(xp.sum(g, axis=1).T, x)

    def param_hessian(self, cache: Any, name: str, h: Array, per_sample: bool, other: str | None = None) -> Array:
        x = cache[0]
        xp = array_namespace(h)
        other = name if other is None else other
        if name == "bias" and other == "weight":
            block = self.param_hessian(cache, "weight", h, per_sample, "bias")
            lead = 2 if per_sample else 0
            nb, nw = self.bias.ndim, 2
            perm = tuple(range(lead)) + tuple(lead + nw + j for j in range(nb)) + tuple(lead + j for j in range(nw))
            return xp.permute_dims(block, perm)
        B, m, o, _ = h.shape
        i = x.shape[1]
        if name == "bias" and other == "bias":
            shape = tuple(self.bias.shape)
            if per_sample:
                return xp.reshape(h, (B, m, *shape, *shape))
            return xp.reshape(xp.sum(h, axis=(0, 1)), shape + shape)
        if name == "weight" and other == "bias":  # ∂²/∂W_ab ∂b_c = h_ac x_b
            shape = tuple(self.bias.shape)
            if per_sample:
                block = h[:, :, :, None, :] * x[:, None, None, :, None]
                return xp.reshape(block, (B, m, o, i, *shape))
            hs = xp.reshape(h[:, 0, ...] if m == 1 else xp.sum(h, axis=1), (B, o * o))
            full = xp.permute_dims(xp.reshape(xp.matmul(hs.T, x), (o, o, i)), (0, 2, 1))
            return xp.reshape(full, (o, i, *shape))
        # The weight enters linearly: d²/dW² = h ⊗ x xᵀ per sample (a Kronecker product).
        if per_sample:
            return h[:, :, :, None, :, None] * x[:, None, None, :, None, None] * x[:, None, None, None, None, :]
        hs = h[:, 0, ...] if m == 1 else xp.sum(h, axis=1)  # (B, o, o)
        if is_lazy(xp):  # Dask: one plain GEMM, (o², B) @ (B, i²)
            xx = xp.reshape(x[:, :, None] * x[:, None, :], (B, i * i))
            full = xp.reshape(xp.matmul(xp.reshape(hs, (B, o * o)).T, xx), (o, o, i, i))
            return xp.permute_dims(full, (0, 2, 1, 3))
        return _kron_sum_symmetric(xp, hs, x)

    def __repr__(self) -> str:
        bias = "" if self.bias is None else f", bias {tuple(self.bias.shape)}"
        return f"Dense(weight {tuple(self.weight.shape)}{bias})"


@functools.lru_cache(maxsize=64)
def _triangle(n: int) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Upper triangle of an ``(n, n)`` matrix: flat positions of its ``n(n+1)/2`` entries, and
    for every ``(a, c)`` the index of ``(min, max)`` among them."""
    rows, cols = numpy.triu_indices(n)
    pack = numpy.empty((n, n), dtype=numpy.int64)
    pack[rows, cols] = pack[cols, rows] = numpy.arange(rows.size)
    return rows * n + cols, pack


def _kron_sum_symmetric(xp: Any, hs: Array, x: Array) -> Array:
    """``Σ_b hs_b ⊗ x_b x_bᵀ`` as ``(o, i, o, i)``, for symmetric ``hs`` ``(B, o, o)``.

    Both factors are symmetric, so only pairs ``a ≤ c`` and ``b ≤ d`` are multiplied: one GEMM
    ``(o(o+1)/2, B) @ (B, i(i+1)/2)``, a quarter of the plain ``(o², B) @ (B, i²)``, then one
    gather spreads it over the four index orders (32×32 layer, batch 1000: 0.28 instead of
    1.05 G multiply-adds).
    """
    B, o, _ = hs.shape
    i = x.shape[1]
    where = device(x)
    flat_o, pack_o = (xp.asarray(a, device=where) for a in _triangle(o))
    flat_i, pack_i = (xp.asarray(a, device=where) for a in _triangle(i))
    hp = xp.take(xp.reshape(hs, (B, o * o)), flat_o, axis=1)  # (B, o(o+1)/2)
    xx = xp.take(xp.reshape(x[:, :, None] * x[:, None, :], (B, i * i)), flat_i, axis=1)
    packed = xp.reshape(xp.matmul(hp.T, xx), (-1,))
    index = pack_o[:, None, :, None] * flat_i.shape[0] + pack_i[None, :, None, :]  # (o, i, o, i)
    return xp.reshape(xp.take(packed, xp.reshape(index, (-1,)), axis=0), (o, i, o, i))


def _shape(a: Any) -> str:
    return str(tuple(a.shape)) if hasattr(a, "shape") else type(a).__name__
