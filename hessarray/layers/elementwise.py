"""Elementwise activations ``y_i = φ(x_i)``: diagonal Jacobian, diagonal curvature.

Each activation gives ``φ``, ``φ'`` and ``φ''`` from one evaluation (sharing subexpressions).
The curvature ``tᵀ diag(g φ'') t`` is returned as the factor triple ``(t, g φ'', t)``; the
``(n, n)`` diagonal, let alone the ``(n, n, n)`` second-derivative tensor, is never built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _delegation
from .._backend import add_diagonal, array_namespace, diag_embed
from .base import Array, Contracted, Layer, sample_major
from .lowered import Pointwise

#: Per class: whether its ``lowered_name`` names its ``derivatives`` (no subclass redefined them).
_NAMED: dict[type, bool] = {}


class Activation(Layer):
    """Base of elementwise layers: subclasses implement :meth:`derivatives`."""

    #: The name compiled executors know this function by (:class:`~.lowered.Pointwise`), or
    #: ``None``: a function only its Python :meth:`derivatives` computes.
    lowered_name: str | None = None

    def derivatives(self, xp: Any, z: Array) -> tuple[Array, Array, Array]:
        """``(φ(z), φ'(z), φ''(z))`` for an array ``z``, elementwise."""
        raise NotImplementedError

    def lowered_params(self) -> tuple[float, ...]:
        """The constants of ``φ`` that :class:`~.lowered.Pointwise` carries (none by default)."""
        return ()

    def lower(self) -> tuple | None:
        kind = type(self)
        named = _NAMED.get(kind)
        if named is None:  # (per class: the models of small batches are call-bound)
            # A subclass that redefines derivatives() computes another function than its name says.
            mro = kind.__mro__
            at = next(i for i, cls in enumerate(mro) if "lowered_name" in cls.__dict__)
            named = _NAMED[kind] = not any("derivatives" in cls.__dict__ for cls in mro[:at])
        if self.lowered_name is None or not named:
            return None
        return (Pointwise(self.lowered_name, self.lowered_params(), self.has_curvature),)

    def forward(self, x: Array) -> tuple[Array, Any]:
        f, df, d2f = self.derivatives(array_namespace(x), x)
        return f, (df, d2f)

    def push(self, cache: Any, t: Array, g: Array | None = None) -> tuple[Array, list]:
        df, d2f = cache
        if g is not None and self.has_curvature:
            fused = _delegation.push_curvature(df, d2f, g, t)  # one compiled pass (NumPy, few directions)
            if fused is not None:
                return fused[0], [Contracted(fused[1])]
        t_out = df * t  # (B, n) against (k, B, n): one flat pass per direction
        if g is None or not self.has_curvature:
            return t_out, []
        c = g * d2f[:, None, :]  # (B, m, n): Σ_j g_j ∂²y_j/∂x_n², the diagonal curvature
        return t_out, [(t, c, t)]

    def pull(self, cache: Any, g: Array) -> Array:
        return g * cache[0][:, None, :]

    def curvature_apply(self, cache: Any, g: Array, t: Array) -> Array | None:
        if not self.has_curvature:
            return None
        c = g * cache[1][:, None, :]
        return c[:, :, None, :] * sample_major(t)[:, None, :, :]

    def pull_hessian(self, cache: Any, g: Array, h: Array | None) -> Array | None:
        df, d2f = cache
        xp = array_namespace(df)
        curved = self.has_curvature and g is not None  # g None: Gauss-Newton, no curvature term
        if h is None:
            return diag_embed(xp, g * d2f[:, None, :]) if curved else None
        # diag(φ') h diag(φ'): the (B, n, n) outer product first, then one pass over h.
        jhj = h * (df[:, :, None] * df[:, None, :])[:, None, ...]
        return add_diagonal(xp, jhj, g * d2f[:, None, :], owned=True) if curved else jhj


def _sigmoid(xp: Any, z: Array) -> Array:
    # tanh form: no overflow of exp for large |z|.
    return 0.5 * xp.tanh(0.5 * z) + 0.5


class Tanh(Activation):
    """``tanh(z)``; ``φ' = 1 - φ²``, ``φ'' = -2 φ φ'``."""

    lowered_name = "tanh"

    def derivatives(self, xp, z):
        f = xp.tanh(z)
        df = 1.0 - f * f
        return f, df, -2.0 * f * df


class Sigmoid(Activation):
    """Logistic ``1 / (1 + e^{-z})``; ``φ' = φ(1-φ)``, ``φ'' = φ'(1-2φ)``."""

    lowered_name = "sigmoid"

    def derivatives(self, xp, z):
        s = _sigmoid(xp, z)
        df = s * (1.0 - s)
        return s, df, df * (1.0 - 2.0 * s)


class Softplus(Activation):
    """``log(1 + e^{βz}) / β``, evaluated as ``max(βz, 0) + log1p(e^{-|βz|})`` (stable).

    Parameters
    ----------
    beta : float, default 1
    """

    lowered_name = "softplus"

    def __init__(self, beta: float = 1.0) -> None:
        if not beta > 0:
            raise ValueError(f"Softplus: beta must be positive, got {beta}")
        self.beta = float(beta)

    def derivatives(self, xp, z):
        bz = self.beta * z
        pos = xp.where(bz > 0, bz, xp.zeros_like(bz))
        f = (pos + xp.log1p(xp.exp(-xp.abs(bz)))) / self.beta
        s = _sigmoid(xp, bz)
        return f, s, self.beta * s * (1.0 - s)

    def lowered_params(self):
        return (self.beta,)

    def __repr__(self):
        return f"Softplus(beta={self.beta})"


class LeakyReLU(Activation):
    """``z`` for ``z > 0``, else ``slope·z``; no curvature (second derivative 0 a.e.).

    Parameters
    ----------
    slope : float, default 0.01
    """

    lowered_name = "leaky_relu"

    has_curvature = False

    def __init__(self, slope: float = 0.01) -> None:
        self.slope = float(slope)

    def derivatives(self, xp, z):
        pos = z > 0
        ones = xp.ones_like(z)
        df = xp.where(pos, ones, self.slope * ones)
        return z * df, df, xp.zeros_like(z)

    def lowered_params(self):
        return (self.slope,)

    def __repr__(self):
        return f"LeakyReLU(slope={self.slope})"


class ReLU(LeakyReLU):
    """``max(z, 0)``; derivative 1 for ``z > 0`` else 0; no curvature."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def __repr__(self):
        return "ReLU()"


class ELU(Activation):
    """``z`` for ``z > 0``, else ``α(e^z - 1)``.

    Parameters
    ----------
    alpha : float, default 1
    """

    lowered_name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = float(alpha)

    def derivatives(self, xp, z):
        pos = z > 0
        zero = xp.zeros_like(z)
        e = self.alpha * xp.exp(xp.where(pos, zero, z))  # exp of the negative part only
        f = xp.where(pos, z, e - self.alpha)
        df = xp.where(pos, xp.ones_like(z), e)
        return f, df, xp.where(pos, zero, e)

    def lowered_params(self):
        return (self.alpha,)

    def __repr__(self):
        return f"ELU(alpha={self.alpha})"


class SiLU(Activation):
    """``z σ(z)`` (swish); ``φ' = σ + zσ(1-σ)``, ``φ'' = σ(1-σ)(2 + z(1-2σ))``."""

    lowered_name = "silu"

    def derivatives(self, xp, z):
        s = _sigmoid(xp, z)
        ds = s * (1.0 - s)
        return z * s, s + z * ds, ds * (2.0 + z * (1.0 - 2.0 * s))


class LogCosh(Activation):
    """``log(cosh z)`` evaluated as ``|z| + log1p(e^{-2|z|}) - log 2`` (stable)."""

    lowered_name = "logcosh"

    def derivatives(self, xp, z):
        a = xp.abs(z)
        f = a + xp.log1p(xp.exp(-2.0 * a)) - math.log(2.0)
        th = xp.tanh(z)
        return f, th, 1.0 - th * th


class Sin(Activation):
    """``sin z``."""

    lowered_name = "sin"

    def derivatives(self, xp, z):
        s = xp.sin(z)
        return s, xp.cos(z), -s


class Cos(Activation):
    """``cos z``."""

    lowered_name = "cos"

    def derivatives(self, xp, z):
        c = xp.cos(z)
        return c, -xp.sin(z), -c


class Exp(Activation):
    """``e^z``."""

    lowered_name = "exp"

    def derivatives(self, xp, z):
        e = xp.exp(z)
        return e, e, e


class Square(Activation):
    """``z²``."""

    lowered_name = "square"

    def derivatives(self, xp, z):
        return z * z, 2.0 * z, 2.0 * xp.ones_like(z)


class Power(Activation):
    """``z^p`` for a real exponent ``p`` (negative ``z`` gives NaN unless ``p`` is integral).

    Parameters
    ----------
    p : float
    """

    lowered_name = "power"

    def __init__(self, p: float) -> None:
        self.p = float(p)
        self.has_curvature = self.p not in (0.0, 1.0)

    def _term(self, xp, z, k):
        # p (p-1) ... (p-k+1) z^(p-k); an exponent of 0 gives 1, also at z = 0.
        coef = math.prod(self.p - j for j in range(k))
        e = self.p - k
        if coef == 0.0:
            return xp.zeros_like(z)
        if e == 0.0:
            return coef * xp.ones_like(z)
        if e == 1.0:
            return coef * z
        if e == 2.0:
            return coef * (z * z)
        return coef * z**e

    def derivatives(self, xp, z):
        return self._term(xp, z, 0), self._term(xp, z, 1), self._term(xp, z, 2)

    def lowered_params(self):
        return (self.p,)

    def __repr__(self):
        return f"Power({self.p})"


class Identity(Activation):
    """``z`` unchanged."""

    lowered_name = "identity"

    has_curvature = False

    def derivatives(self, xp, z):
        return z, xp.ones_like(z), xp.zeros_like(z)


class Elementwise(Activation):
    """A user's elementwise function with its first and second derivatives.

    Parameters
    ----------
    f, df, d2f : callable
        Each maps an array ``z`` to an array of the same shape, written with array-API
        calls (get the namespace with ``array_api_compat.array_namespace(z)``).

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> cube = ha.Elementwise(lambda z: z**3, lambda z: 3 * z**2, lambda z: 6 * z)
    >>> float(ha.hessian(ha.Sequential(cube, ha.Sum()), np.array([2.0]))[0, 0])
    12.0
    """

    def __init__(self, f: Callable, df: Callable, d2f: Callable, name: str | None = None) -> None:
        for fn, what in ((f, "f"), (df, "df"), (d2f, "d2f")):
            if not callable(fn):
                raise TypeError(f"Elementwise: {what} must be callable, got {type(fn).__name__}")
        self.f, self.df, self.d2f = f, df, d2f
        self.name = name or getattr(f, "__name__", "f")

    def derivatives(self, xp, z):
        # Constants (``lambda z: 2.0``) are allowed: give them the shape of z.
        return tuple(
            v if hasattr(v, "shape") and tuple(v.shape) == tuple(z.shape) else v + xp.zeros_like(z)
            for v in (self.f(z), self.df(z), self.d2f(z))
        )

    def __repr__(self):
        return f"Elementwise({self.name})"
