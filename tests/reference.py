"""Independent reference implementations for the tests (not a test module).

An architecture is a list of specs built from NumPy arrays:

* ``("dense", W, b)`` with ``W`` of shape ``(out, in)`` and ``b`` ``None``, ``(out,)`` or ``(out, 1)``
* ``("act", name, *args)``: an activation from :data:`ACTIVATIONS` (``("act", "softplus", 2.0)``)
* ``("residual", h, [specs])``: ``x + h * block(x)``
* ``("sum",)``, ``("mse", target)``, ``("ce", labels)``: one scalar per sample

:func:`build_hessarray` turns a spec into a ``hessarray.Sequential`` on any backend;
:func:`jax_reference` and :func:`torch_reference` compute the same function's value,
Jacobian, input Hessian and parameter derivatives with JAX / ``torch.func`` autodiff in
float64. The activations are written here again from the libraries' own functions, never
taken from hessarray.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import array_api_compat
import numpy as np

import hessarray as ha

# -- the user's elementwise function used in the tests: f(z) = sin z + z³/6 ------------------------


def user_f(z):
    xp = array_api_compat.array_namespace(z)
    return xp.sin(z) + z * z * z / 6.0


def user_df(z):
    xp = array_api_compat.array_namespace(z)
    return xp.cos(z) + z * z / 2.0


def user_d2f(z):
    xp = array_api_compat.array_namespace(z)
    return -xp.sin(z) + z


#: activation name -> factory of the hessarray layer from the spec's extra arguments
ACTIVATIONS = {
    "tanh": lambda: ha.Tanh(),
    "sigmoid": lambda: ha.Sigmoid(),
    "softplus": lambda beta=1.0: ha.Softplus(beta),
    "relu": lambda: ha.ReLU(),
    "leaky_relu": lambda slope=0.01: ha.LeakyReLU(slope),
    "elu": lambda alpha=1.0: ha.ELU(alpha),
    "silu": lambda: ha.SiLU(),
    "logcosh": lambda: ha.LogCosh(),
    "sin": lambda: ha.Sin(),
    "cos": lambda: ha.Cos(),
    "exp": lambda: ha.Exp(),
    "square": lambda: ha.Square(),
    "power": lambda p: ha.Power(p),
    "identity": lambda: ha.Identity(),
    "user": lambda: ha.Elementwise(user_f, user_df, user_d2f, name="user"),
}
TERMINALS = ("sum", "mse", "ce")


# -- spec helpers -------------------------------------------------------------------------------
def is_scalar(spec) -> bool:
    """Whether the model ends in a layer that gives one number per sample."""
    return spec[-1][0] in TERMINALS


def param_arrays(spec, prefix: str = "") -> dict[str, np.ndarray]:
    """The model's parameters by hessarray name, in hessarray's order."""
    out: dict[str, np.ndarray] = {}
    for i, item in enumerate(spec):
        if item[0] == "dense":
            out[f"{prefix}{i}.weight"] = item[1]
            if item[2] is not None:
                out[f"{prefix}{i}.bias"] = item[2]
        elif item[0] == "residual":
            out.update(param_arrays(item[2], f"{prefix}{i}."))
    return out


def astype_spec(spec, dtype):
    """The spec with its floating arrays cast to ``dtype`` (integer labels kept)."""

    def cast(a):
        return a if a is None or not np.issubdtype(a.dtype, np.floating) else a.astype(dtype)

    out = []
    for item in spec:
        if item[0] == "dense":
            out.append(("dense", cast(item[1]), cast(item[2])))
        elif item[0] == "residual":
            out.append(("residual", item[1], astype_spec(item[2], dtype)))
        elif item[0] in ("mse", "ce"):
            out.append((item[0], cast(item[1])))
        else:
            out.append(item)
    return out


def describe(spec) -> str:
    """A one-line description of a spec, for failure messages."""
    parts = []
    for item in spec:
        if item[0] == "dense":
            b = "" if item[2] is None else f"+b{item[2].shape}"
            parts.append(f"dense{item[1].shape}{b}")
        elif item[0] == "act":
            parts.append(item[1] + (f"{item[2:]}" if len(item) > 2 else ""))
        elif item[0] == "residual":
            parts.append(f"residual(h={item[1]}, [{describe(item[2])}])")
        else:
            parts.append(f"{item[0]}{tuple(item[1].shape) if len(item) > 1 else ''}")
    return ", ".join(parts)


# -- hessarray -----------------------------------------------------------------------------------
def build_layers(spec, asarray) -> list:
    layers = []
    for item in spec:
        kind = item[0]
        if kind == "dense":
            layers.append(ha.Dense(asarray(item[1]), None if item[2] is None else asarray(item[2])))
        elif kind == "act":
            layers.append(ACTIVATIONS[item[1]](*item[2:]))
        elif kind == "residual":
            layers.append(ha.Residual(*build_layers(item[2], asarray), h=item[1]))
        elif kind == "sum":
            layers.append(ha.Sum())
        elif kind == "mse":
            layers.append(ha.MSELoss(asarray(item[1])))
        elif kind == "ce":
            layers.append(ha.SoftmaxCrossEntropy(asarray(item[1])))
        else:  # pragma: no cover - a typo in a test
            raise ValueError(f"unknown spec {kind!r}")
    return layers


def build_hessarray(spec, asarray) -> ha.Sequential:
    """The spec as a ``hessarray.Sequential`` whose arrays are ``asarray(numpy_array)``."""
    return ha.Sequential(*build_layers(spec, asarray))


# -- a batched forward pass written once for both autodiff libraries ---------------------------
def _forward(spec, params: dict, X, ops, prefix: str = ""):
    """``X`` of shape ``(B, n)`` through the spec; ``(B,)`` for scalar models, else ``(B, m)``."""
    for i, item in enumerate(spec):
        kind = item[0]
        if kind == "dense":
            W = params[f"{prefix}{i}.weight"]
            X = X @ W.T
            if item[2] is not None:
                X = X + ops.reshape(params[f"{prefix}{i}.bias"], (-1,))
        elif kind == "act":
            X = ops.act(item[1], X, *item[2:])
        elif kind == "residual":
            X = X + item[1] * _forward(item[2], params, X, ops, f"{prefix}{i}.")
        elif kind == "sum":
            X = ops.sum(X, -1)
        elif kind == "mse":
            X = ops.mean((X - ops.const(item[1], X)) ** 2, -1)
        elif kind == "ce":
            X = ops.cross_entropy(X, item[1])
    return X


class JaxOps:
    def __init__(self):
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        self.jax, self.jnp = jax, jnp

    def reshape(self, a, shape):
        return self.jnp.reshape(a, shape)

    def sum(self, a, axis):
        return self.jnp.sum(a, axis=axis)

    def mean(self, a, axis):
        return self.jnp.mean(a, axis=axis)

    def const(self, a, like):
        return self.jnp.asarray(a, dtype=like.dtype)

    def act(self, name, z, *args):
        jnp, nn = self.jnp, self.jax.nn
        if name == "tanh":
            return jnp.tanh(z)
        if name == "sigmoid":
            return nn.sigmoid(z)
        if name == "softplus":
            beta = args[0] if args else 1.0
            return nn.softplus(beta * z) / beta
        if name == "relu":
            return nn.relu(z)
        if name == "leaky_relu":
            return nn.leaky_relu(z, args[0] if args else 0.01)
        if name == "elu":
            return nn.elu(z, args[0] if args else 1.0)
        if name == "silu":
            return nn.silu(z)
        if name == "logcosh":  # log cosh z = logaddexp(z, -z) - log 2, without overflow of cosh
            return jnp.logaddexp(z, -z) - np.log(2.0)
        if name == "sin":
            return jnp.sin(z)
        if name == "cos":
            return jnp.cos(z)
        if name == "exp":
            return jnp.exp(z)
        if name == "square":
            return jnp.square(z)
        if name == "power":
            p = args[0]
            return z ** int(p) if float(p).is_integer() else jnp.power(z, p)
        if name == "identity":
            return z
        if name == "user":
            return jnp.sin(z) + z**3 / 6.0
        raise ValueError(name)

    def cross_entropy(self, X, labels):
        jnp = self.jnp
        logp = self.jax.nn.log_softmax(X, axis=-1)
        if np.issubdtype(labels.dtype, np.integer):
            lab = jnp.asarray(labels)
            if lab.ndim == 0:
                lab = jnp.broadcast_to(lab, X.shape[:1])
            return -jnp.take_along_axis(logp, lab[:, None], axis=-1)[:, 0]
        return -jnp.sum(jnp.asarray(labels, dtype=X.dtype) * logp, axis=-1)


class TorchOps:
    def __init__(self):
        import torch

        self.torch, self.F = torch, torch.nn.functional

    def reshape(self, a, shape):
        return a.reshape(shape)

    def sum(self, a, axis):
        return a.sum(axis)

    def mean(self, a, axis):
        return a.mean(axis)

    def const(self, a, like):
        return self.torch.as_tensor(a, dtype=like.dtype, device=like.device)

    def act(self, name, z, *args):
        torch, F = self.torch, self.F
        if name == "tanh":
            return torch.tanh(z)
        if name == "sigmoid":
            return torch.sigmoid(z)
        if name == "softplus":
            # linear above beta·z = 30 (torch's default 20 is off by 2e-9; 30 by 1e-13 absolute)
            return F.softplus(z, beta=args[0] if args else 1.0, threshold=30.0)
        if name == "relu":
            return F.relu(z)
        if name == "leaky_relu":
            return F.leaky_relu(z, args[0] if args else 0.01)
        if name == "elu":
            return F.elu(z, args[0] if args else 1.0)
        if name == "silu":
            return F.silu(z)
        if name == "logcosh":  # log cosh z = z + log(1 + e^{-2z}) - log 2, without overflow of cosh
            return z + F.softplus(-2.0 * z, threshold=30.0) - np.log(2.0)
        if name == "sin":
            return torch.sin(z)
        if name == "cos":
            return torch.cos(z)
        if name == "exp":
            return torch.exp(z)
        if name == "square":
            return torch.square(z)
        if name == "power":
            p = args[0]
            return z ** int(p) if float(p).is_integer() else torch.pow(z, p)
        if name == "identity":
            return z
        if name == "user":
            return torch.sin(z) + z**3 / 6.0
        raise ValueError(name)

    def cross_entropy(self, X, labels):
        torch = self.torch
        logp = torch.log_softmax(X, dim=-1)
        if np.issubdtype(labels.dtype, np.integer):
            lab = torch.as_tensor(labels, device=X.device)
            if lab.ndim == 0:
                lab = lab.expand(X.shape[0])
            return -torch.gather(logp, -1, lab[:, None])[:, 0]
        return -(self.const(labels, X) * logp).sum(-1)


@functools.cache
def _jax_ops() -> JaxOps:
    return JaxOps()


@functools.cache
def _torch_ops() -> TorchOps:
    return TorchOps()


# -- references ------------------------------------------------------------------------------
def _blocks(H, scalar: bool):
    """Per-sample blocks of the Hessian of a batch-summed output: ``(B,) + o + (d, d)``."""
    B = H.shape[-2]
    idx = np.arange(B)
    if scalar:  # (B, d, B, d)
        return H[idx, :, idx, :]
    return H[:, idx, :, idx, :]  # (m, B, d, B, d) -> (B, m, d, d)


def _jac_blocks(J, scalar: bool):
    """``o + (B, d)`` (Jacobian of the batch-summed output) -> ``(B,) + o + (d,)``."""
    return J if scalar else np.moveaxis(J, 0, 1)


def jax_reference(spec, x: np.ndarray, wrt: str | None = None) -> dict[str, np.ndarray]:
    """JAX float64 autodiff of the spec at ``x`` of shape ``(B, d)``.

    Returns a dict of NumPy arrays: ``value`` ``(B,)+o``, ``jacobian`` ``(B,)+o+(d,)``,
    ``hessian`` ``(B,)+o+(d,d)`` and, when ``wrt`` names a parameter of shape ``s``,
    ``p_value`` (sum over batch and outputs), ``p_grad`` ``s``, ``p_hess`` ``s+s``,
    ``p_jac`` ``(B,)+o+s`` and ``p_hess_ps`` ``(B,)+o+s+s``. All are computed in one jitted
    function (one compilation per architecture).
    """
    ops = _jax_ops()
    jax, jnp = ops.jax, ops.jnp
    params = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in param_arrays(spec).items()}
    scalar = is_scalar(spec)

    def F(p, X):
        return _forward(spec, p, X, ops)

    def everything(params, X):
        def total(X):  # samples are independent: the Hessian of the sum is block diagonal
            return jnp.sum(F(params, X), axis=0)

        out = {"value": F(params, X), "jacobian": jax.jacfwd(total)(X), "hessian": jax.hessian(total)(X)}
        if wrt is not None:

            def G(theta, X):
                return F({**params, wrt: theta}, X)

            def Gsum(theta):
                return jnp.sum(G(theta, X))

            theta = params[wrt]
            out["p_value"] = Gsum(theta)
            out["p_grad"] = jax.grad(Gsum)(theta)
            out["p_hess"] = jax.hessian(Gsum)(theta)
            out["p_jac"] = jax.jacfwd(G)(theta, X)
            out["p_hess_ps"] = jax.hessian(G)(theta, X)
        return out

    res = {k: np.asarray(v) for k, v in jax.jit(everything)(params, jnp.asarray(x, dtype=jnp.float64)).items()}
    res["jacobian"] = _jac_blocks(res["jacobian"], scalar)
    res["hessian"] = _blocks(res["hessian"], scalar)
    return res


_CACHE: dict[str, dict[str, np.ndarray]] = {}


def _key(*parts) -> str:
    h = hashlib.sha256()

    def feed(obj):
        if isinstance(obj, np.ndarray):
            h.update(f"array{obj.dtype}{obj.shape}".encode())
            h.update(np.ascontiguousarray(obj).tobytes())
        elif isinstance(obj, list | tuple):
            h.update(f"seq{len(obj)}(".encode())
            for item in obj:
                feed(item)
            h.update(b")")
        else:
            h.update(repr(obj).encode())

    for part in parts:
        feed(part)
    return h.hexdigest()


def cached_jax_reference(spec, x: np.ndarray, wrt: str | None = None) -> dict[str, np.ndarray]:
    """:func:`jax_reference`, remembered by content: tests run once per backend reuse it."""
    key = _key("jax", spec, x, wrt)
    if key not in _CACHE:
        _CACHE[key] = jax_reference(spec, x, wrt)
    return _CACHE[key]


def cached_torch_reference(spec, x: np.ndarray, wrt: str | None = None) -> dict[str, np.ndarray]:
    """:func:`torch_reference`, remembered by content. ``torch.func`` runs eagerly, without
    JAX's compilation per architecture, so the many fixed-model tests use it."""
    key = _key("torch", spec, x, wrt)
    if key not in _CACHE:
        _CACHE[key] = torch_reference(spec, x, wrt)
    return _CACHE[key]


def torch_reference(spec, x: np.ndarray, wrt: str | None = None) -> dict[str, np.ndarray]:
    """The same quantities as :func:`jax_reference`, from ``torch.func`` in float64."""
    import torch
    from torch.func import hessian, jacfwd, jacrev

    ops = _torch_ops()
    params = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in param_arrays(spec).items()}
    X = torch.as_tensor(x, dtype=torch.float64)
    scalar = is_scalar(spec)

    def F(p, X):
        return _forward(spec, p, X, ops)

    def total(X):
        return F(params, X).sum(0)

    out = {"value": F(params, X), "jacobian": jacrev(total)(X), "hessian": hessian(total)(X)}
    if wrt is not None:

        def G(theta, X):
            return F({**params, wrt: theta}, X)

        def Gsum(theta):
            return G(theta, X).sum()

        theta = params[wrt]
        out["p_value"] = Gsum(theta)
        out["p_grad"] = jacrev(Gsum)(theta)
        out["p_hess"] = hessian(Gsum)(theta)
        out["p_jac"] = jacfwd(G)(theta, X)
        out["p_hess_ps"] = hessian(G)(theta, X)
    res = {k: v.detach().numpy() for k, v in out.items()}
    res["jacobian"] = _jac_blocks(res["jacobian"], scalar)
    res["hessian"] = _blocks(res["hessian"], scalar)
    return res


def torch_forward(spec, params: dict, X):
    """The spec's batched forward pass on torch tensors (``params`` by hessarray name)."""
    return _forward(spec, params, X, _torch_ops())


# -- comparisons -----------------------------------------------------------------------------
def max_err(actual: Any, expected: Any) -> tuple[float, float]:
    """``(max |actual - expected|, max |expected|)`` over all entries (shapes must agree)."""
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != expected {b.shape}"
    if b.size == 0:
        return 0.0, 0.0
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))


def assert_close(actual: Any, expected: Any, rtol: float, what: str = "") -> None:
    """``max|a - b| <= rtol * max(1, max|b|)`` (NaN anywhere fails)."""
    err, scale = max_err(actual, expected)
    bound = rtol * max(1.0, scale)
    assert err <= bound, f"{what}: max abs error {err:.3e} > {bound:.3e} (max |expected| {scale:.3e})"


def assert_rel(actual: Any, expected: Any, rtol: float, what: str = "") -> None:
    """``max|a - b| <= rtol * max|b|``: relative to the reference's own scale."""
    err, scale = max_err(actual, expected)
    assert err <= rtol * scale, f"{what}: max abs error {err:.3e} > {rtol:.1e} * {scale:.3e}"
