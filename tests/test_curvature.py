"""Laplacian, Hessian diagonal and input Hessian-vector products, on every backend, against
float64 JAX autodiff on random architectures (trace / diagonal / product of ``jax.hessian``)."""

from __future__ import annotations

import numpy as np
import pytest
from backends import BACKENDS, SLOW, materialize, same_kind
from hypothesis import given, seed, settings
from reference import assert_close, build_hessarray, cached_jax_reference
from strategies import HYPOTHESIS_SEED, architectures

import hessarray as ha

RTOL = 1e-10
FAST = [b for b in BACKENDS if b not in SLOW]


def _check(xp, arch):
    ref = cached_jax_reference(arch.spec, arch.x, None)["hessian"]  # (B,) + o + (d, d)
    model = build_hessarray(arch.spec, xp.asarray)
    x = xp.asarray(arch.x)
    rng = np.random.default_rng(0)
    v1 = rng.standard_normal(arch.x.shape)
    vk = rng.standard_normal((*arch.x.shape, 3))
    got = {
        "laplacian": ha.laplacian(model, x, chunk_size=arch.chunk_size),
        "diagonal": ha.hessian_diagonal(model, x, chunk_size=arch.chunk_size),
        "hvp1": ha.hvp(model, x, xp.asarray(v1), chunk_size=arch.chunk_size),
        "hvpk": ha.hvp(model, x, xp.asarray(vk), chunk_size=arch.chunk_size),
    }
    for name, r in got.items():
        assert same_kind(r, x) and r.dtype == x.dtype, name
        assert xp.device_of(r) == xp.device, name
    got = materialize(xp, got)
    expect = {
        "laplacian": np.trace(ref, axis1=-2, axis2=-1),
        "diagonal": np.diagonal(ref, axis1=-2, axis2=-1),
        "hvp1": np.einsum("b...ij,bj->b...i", ref, v1),
        "hvpk": np.einsum("b...ij,bjk->b...ik", ref, vk),
    }
    for name in got:
        assert got[name].shape == expect[name].shape, name
        assert_close(got[name], expect[name], RTOL, f"{name} on {xp.name} for {arch!r}")


test_curvature_matches_jax = pytest.mark.parametrize("xp", FAST, indirect=True)(
    seed(HYPOTHESIS_SEED)(settings(max_examples=8)(given(arch=architectures())(_check)))
)
test_curvature_matches_jax_slow_backends = pytest.mark.parametrize("xp", sorted(SLOW), indirect=True)(
    seed(HYPOTHESIS_SEED)(settings(max_examples=2)(given(arch=architectures())(_check)))
)


def _model(xp):
    rng = np.random.default_rng(1)
    return ha.Sequential(
        ha.Dense(xp.asarray(rng.standard_normal((6, 3))), xp.asarray(rng.standard_normal(6))),
        ha.Tanh(),
        ha.Residual(ha.Dense(xp.asarray(rng.standard_normal((6, 6)) / 3)), ha.SiLU(), h=0.5),
        ha.Dense(xp.asarray(rng.standard_normal((1, 6)))),
        ha.Sum(),
    )


def test_single_sample_shapes(xp):
    model = _model(xp)
    x = xp.asarray(np.array([0.1, -0.2, 0.3]))
    H = xp.to_numpy(ha.hessian(model, x))
    assert xp.to_numpy(ha.laplacian(model, x)).shape == ()
    assert_close(xp.to_numpy(ha.laplacian(model, x)), np.trace(H), RTOL)
    assert_close(xp.to_numpy(ha.hessian_diagonal(model, x)), np.diagonal(H), RTOL)
    v = np.array([1.0, 2.0, -1.0])
    assert_close(xp.to_numpy(ha.hvp(model, x, xp.asarray(v))), H @ v, RTOL)
    V = np.arange(6.0).reshape(3, 2)
    assert_close(xp.to_numpy(ha.hvp(model, x, xp.asarray(V))), H @ V, RTOL)


def test_hvp_rejects_wrong_shape(xp):
    model = _model(xp)
    x = xp.asarray(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 3\)|\(4, 3\).*\(4, 2\)"):
        ha.hvp(model, x, xp.asarray(np.zeros((4, 2))))
    with pytest.raises(ValueError, match="v must have shape"):
        ha.hvp(model, x, xp.asarray(np.zeros((5, 3))))


def test_laplacian_has_no_d_squared_array(xp):
    """The Laplacian is assembled from per-layer diagonals: the d x d Hessian never appears.

    Checked structurally: the forward-mode contraction in ``diag`` mode returns (B, m, d)."""
    from hessarray.engine.forward import forward_mode

    model = _model(xp)
    x = xp.asarray(np.ones((2, 3)))
    _, _, diag = forward_mode(model.layers, x, True, part="diag")
    assert tuple(diag.shape) == (2, 1, 3)


def test_laplacian_trains_with_torch_autograd():
    """d/dW of a physics-informed loss through the Laplacian equals torch.func's."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    W1 = torch.tensor(rng.standard_normal((5, 2)), requires_grad=True)
    W2 = torch.tensor(rng.standard_normal((1, 5)), requires_grad=True)
    x = torch.tensor(rng.standard_normal((7, 2)))
    f = torch.sin(x[:, 0])
    model = ha.Sequential(ha.Dense(W1), ha.Tanh(), ha.Dense(W2), ha.Sum())
    loss = torch.mean((ha.laplacian(model, x) - f) ** 2)
    g1, g2 = torch.autograd.grad(loss, (W1, W2))

    def u(xi, A, B):
        return (B @ torch.tanh(A @ xi))[0]

    def ref_loss(A, B):
        lap = torch.func.vmap(lambda xi: torch.trace(torch.func.hessian(u)(xi, A, B)))(x)
        return torch.mean((lap - f) ** 2)

    r1, r2 = torch.func.grad(ref_loss, argnums=(0, 1))(W1.detach(), W2.detach())
    assert_close(g1.detach().numpy(), r1.numpy(), 1e-10)
    assert_close(g2.detach().numpy(), r2.numpy(), 1e-10)


def test_laplacian_under_jax_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    rng = np.random.default_rng(3)
    W1, W2 = rng.standard_normal((5, 2)), rng.standard_normal((1, 5))
    model = ha.Sequential(ha.Dense(jnp.asarray(W1)), ha.Tanh(), ha.Dense(jnp.asarray(W2)), ha.Sum())
    x = jnp.asarray(rng.standard_normal((4, 2)))
    lap = jax.jit(lambda x: ha.laplacian(model, x))(x)
    ref = jax.vmap(lambda xi: jnp.trace(jax.hessian(lambda z: (W2 @ jnp.tanh(W1 @ z))[0])(xi)))(x)
    assert_close(np.asarray(lap), np.asarray(ref), 1e-12)
