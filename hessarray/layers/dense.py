"""Dense (affine) layer ``y = x @ Wᵀ + b``: no curvature, one GEMM per pass."""

from __future__ import annotations

from typing import Any

from .._backend import array_namespace, is_array_api_obj, matmul_last
from .base import Array, Layer


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

    # -- first order ----------------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, Any]:
        xp = array_namespace(x)
        w = cast_like(xp, self.weight, x)
        y = xp.matmul(x, w.T)
        if self._b is not None:
            y = y + cast_like(xp, self._b, x)
        return y, (x, w)

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list]:
        _, w = cache
        return matmul_last(array_namespace(t), t, w.T), []

    def pull(self, cache: Any, g: Array) -> Array:
        _, w = cache
        return matmul_last(array_namespace(g), g, w)

    # -- second order ---------------------------------------------------------------------
    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        if h is None:
            return None
        _, w = cache
        xp = array_namespace(h)
        # Wᵀ h W as two GEMMs over all samples: a = h W, then aᵀ W (= Wᵀ h W, h symmetric).
        a = matmul_last(xp, h, w)
        return matmul_last(xp, xp.permute_dims(a, (0, 1, 3, 2)), w)

    def flops(self, n_in: int, k: int, m: int) -> tuple[float, float]:
        o, i = self.weight.shape
        return ((1 + k + m) * o * i, (1 + m) * o * i + m * (o * o * i + i * i * o))

    # -- parameters -----------------------------------------------------------------------
    def param_owner(self, cache: Any, name: str, y: Array) -> tuple[Layer, Any, str, Array, list]:
        if name not in self.parameters():
            raise KeyError(name)
        return self, cache, name, y, []

    def param_gradient(self, cache: Any, name: str, g: Array, per_sample: bool = True) -> Array:
        x, _ = cache
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

    def param_hessian(self, cache: Any, name: str, h: Array, per_sample: bool) -> Array:
        x, _ = cache
        xp = array_namespace(h)
        B, m, o, _ = h.shape
        i = x.shape[1]
        if name == "bias":
            shape = tuple(self.bias.shape)
            if per_sample:
                return xp.reshape(h, (B, m, *shape, *shape))
            return xp.reshape(xp.sum(h, axis=(0, 1)), shape + shape)
        # The weight enters linearly: d²/dW² = h ⊗ x xᵀ per sample (a Kronecker product).
        if per_sample:
            return (
                h[:, :, :, None, :, None]
                * x[:, None, None, :, None, None]
                * x[:, None, None, None, None, :]
            )
        hs = xp.reshape(xp.sum(h, axis=1), (B, o * o))
        xx = xp.reshape(x[:, :, None] * x[:, None, :], (B, i * i))
        full = xp.reshape(xp.matmul(hs.T, xx), (o, o, i, i))
        return xp.permute_dims(full, (0, 2, 1, 3))

    def __repr__(self) -> str:
        bias = "" if self.bias is None else f", bias {tuple(self.bias.shape)}"
        return f"Dense(weight {tuple(self.weight.shape)}{bias})"


def _shape(a: Any) -> str:
    return str(tuple(a.shape)) if hasattr(a, "shape") else type(a).__name__
