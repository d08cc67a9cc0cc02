"""Parameter-space curvature (Hessian and Gauss-Newton blocks, products, operators) on every
backend, against float64 JAX autodiff with respect to the flattened parameters."""

from __future__ import annotations

import numpy as np
import pytest
from backends import BACKENDS, SLOW, materialize, same_kind
from hypothesis import given, seed, settings
from reference import _forward, _jax_ops, _key, assert_close, build_hessarray, is_scalar, param_arrays
from strategies import HYPOTHESIS_SEED, architectures

import hessarray as ha

RTOL = 1e-10
FAST = [b for b in BACKENDS if b not in SLOW]
LOSSES = ("mse", "mse_shared", "ce_int", "ce_onehot", "ce_prob")


_CACHE: dict = {}


def jax_parameter_reference(spec, x):
    """:func:`_jax_parameter_reference`, remembered by content (one compile per example)."""
    key = _key("params", spec, x)
    if key not in _CACHE:
        _CACHE[key] = _jax_parameter_reference(spec, x)
    return _CACHE[key]


def _jax_parameter_reference(spec, x):
    """Full Hessian of the batch- and output-summed output with respect to all parameters
    (flattened in hessarray's order) and, for models ending in a loss, the Gauss-Newton matrix
    ``J_θᵀ H_loss J_θ``."""
    ops = _jax_ops()
    jax, jnp = ops.jax, ops.jnp
    params = param_arrays(spec)
    names = list(params)
    shapes = [params[n].shape for n in names]
    sizes = [int(np.prod(s)) for s in shapes]
    theta0 = jnp.concatenate([jnp.asarray(params[n], dtype=jnp.float64).reshape(-1) for n in names])
    X = jnp.asarray(x)

    def unflatten(theta):
        out, i = {}, 0
        for n, s, k in zip(names, shapes, sizes):
            out[n] = theta[i : i + k].reshape(s)
            i += k
        return out

    def total(theta):
        return jnp.sum(_forward(spec, unflatten(theta), X, ops))

    out = {"hessian": np.asarray(jax.hessian(total)(theta0)), "names": names, "sizes": sizes}
    if is_scalar(spec) and spec[-1][0] != "sum":
        body, loss = spec[:-1], spec[-1:]

        def net(theta):
            return _forward(body, unflatten(theta), X, ops).reshape(-1)

        Z = net(theta0)
        J = jax.jacfwd(net)(theta0)  # (B·m, P)
        HL = jax.hessian(lambda z: jnp.sum(_forward(loss, {}, z.reshape(X.shape[0], -1), ops)))(Z)
        out["ggn"] = np.asarray(J.T @ HL @ J)
    return out


def layer_mask(names, sizes):
    """1 on the blocks of parameters owned by the same layer."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    owner = [n.rpartition(".")[0] for n in names]
    mask = np.zeros((offsets[-1], offsets[-1]))
    for i in range(len(names)):
        for j in range(len(names)):
            if owner[i] == owner[j]:
                mask[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]] = 1
    return mask


def _check(xp, arch):
    if not param_arrays(arch.spec):
        return
    ref = jax_parameter_reference(arch.spec, arch.x)
    model = build_hessarray(arch.spec, xp.asarray)
    x = xp.asarray(arch.x)
    mask = layer_mask(ref["names"], ref["sizes"])
    P = mask.shape[0]
    v = np.random.default_rng(0).standard_normal(P)
    got = {
        "full": ha.parameter_hessian(model, x, blocks="full", flat=True, chunk_size=arch.chunk_size),
        "layer": ha.parameter_hessian(model, x, flat=True, chunk_size=arch.chunk_size),
        "hvp": ha.parameter_hvp(model, x, xp.asarray(v), chunk_size=arch.chunk_size),
    }
    expect = {"full": ref["hessian"], "layer": ref["hessian"] * mask, "hvp": ref["hessian"] @ v}
    if "ggn" in ref:
        got["ggn_full"] = ha.gauss_newton(model, x, blocks="full", flat=True, chunk_size=arch.chunk_size)
        got["ggn_layer"] = ha.gauss_newton(model, x, flat=True, chunk_size=arch.chunk_size)
        got["ggn_vp"] = ha.parameter_hvp(model, x, xp.asarray(v), curvature="gauss_newton")
        expect.update(ggn_full=ref["ggn"], ggn_layer=ref["ggn"] * mask, ggn_vp=ref["ggn"] @ v)
    for name, r in got.items():
        assert same_kind(r, x) and r.dtype == x.dtype, name
        assert xp.device_of(r) == xp.device, name
    got = materialize(xp, got)
    for name in got:
        assert_close(got[name], expect[name], RTOL, f"{name} on {xp.name} for {arch!r}")


test_parameter_space_matches_jax = pytest.mark.parametrize("xp", FAST, indirect=True)(
    seed(HYPOTHESIS_SEED)(settings(max_examples=4)(given(arch=architectures())(_check)))
)
test_parameter_space_with_losses_slow_backends = pytest.mark.parametrize("xp", sorted(SLOW), indirect=True)(
    seed(HYPOTHESIS_SEED)(settings(max_examples=2)(given(arch=architectures(terminals=LOSSES))(_check)))
)
test_gauss_newton_matches_jax = pytest.mark.parametrize("xp", ["numpy", "array_api_strict:device1"], indirect=True)(
    seed(HYPOTHESIS_SEED)(settings(max_examples=4)(given(arch=architectures(terminals=LOSSES))(_check)))
)


def _mlp(xp, loss=True):
    rng = np.random.default_rng(5)
    layers = [
        ha.Dense(xp.asarray(rng.standard_normal((4, 3))), xp.asarray(rng.standard_normal(4))),
        ha.Tanh(),
        ha.Residual(ha.Dense(xp.asarray(rng.standard_normal((4, 4)) / 2), xp.asarray(np.zeros((4, 1)))), ha.Sin()),
        ha.Dense(xp.asarray(rng.standard_normal((2, 4)))),
    ]
    if loss:
        layers.append(ha.MSELoss(xp.asarray(rng.standard_normal((6, 2)))))
    return ha.Sequential(*layers), xp.asarray(rng.standard_normal((6, 3)))


def test_blocks_mapping_and_per_sample(xp):
    model, x = _mlp(xp)
    blocks = ha.parameter_hessian(model, x)
    params = model.parameters()
    owners = {n.rpartition(".")[0] for n in params}
    assert set(blocks) == {(a, b) for a in params for b in params if a.rpartition(".")[0] == b.rpartition(".")[0]}
    assert len(owners) == 3
    for (a, b), block in blocks.items():
        assert tuple(block.shape) == tuple(params[a].shape) + tuple(params[b].shape)
    full = ha.parameter_hessian(model, x, blocks="full")
    for key, block in blocks.items():
        assert_close(xp.to_numpy(block), xp.to_numpy(full[key]), RTOL, str(key))
    per = ha.parameter_hessian(model, x, per_sample=True)
    for key, block in per.items():
        assert tuple(block.shape) == (6, *blocks[key].shape)
        assert_close(xp.to_numpy(block).sum(0), xp.to_numpy(blocks[key]), RTOL, str(key))
    # the per-layer blocks agree with hessian(wrt=...) of each parameter
    for name in params:
        assert_close(xp.to_numpy(blocks[name, name]), xp.to_numpy(ha.hessian(model, x, wrt=name)), RTOL, name)


def test_operator_matches_matrix(xp):
    model, x = _mlp(xp)
    for curvature, matrix in (
        ("hessian", ha.parameter_hessian(model, x, blocks="full", flat=True)),
        ("gauss_newton", ha.gauss_newton(model, x, blocks="full", flat=True)),
    ):
        op = ha.parameter_operator(model, x, curvature=curvature)
        P = op.shape[0]
        A = xp.to_numpy(matrix)
        assert A.shape == (P, P)
        assert_close(A, A.T, 1e-12, "symmetric")
        V = np.random.default_rng(1).standard_normal((P, 3))
        assert_close(xp.to_numpy(op @ xp.asarray(V)), A @ V, RTOL, curvature)
        assert_close(xp.to_numpy(op.matvec(xp.asarray(V[:, 0]))), A @ V[:, 0], RTOL, curvature)
        # a mapping of names gives a mapping back
        name = "2.0.weight"
        direction = np.ones(model.parameters()[name].shape)
        out = op @ {name: xp.asarray(direction)}
        assert set(out) == set(model.parameters())


def test_full_hessian_memory_limit(xp):
    model, x = _mlp(xp)
    with pytest.raises(MemoryError, match="blocks='layer'.*parameter_operator"):
        ha.parameter_hessian(model, x, blocks="full", max_bytes=100)
    with pytest.raises(MemoryError, match="GiB"):
        ha.gauss_newton(model, x, flat=True, max_bytes=100)


def test_bad_arguments(xp):
    model, x = _mlp(xp)
    with pytest.raises(ValueError, match="blocks"):
        ha.parameter_hessian(model, x, blocks="diagonal")
    with pytest.raises(ValueError, match="loss"):
        ha.gauss_newton(_mlp(xp, loss=False)[0], x)
    op = ha.parameter_operator(model, x)
    P = sum(int(np.prod(p.shape)) for p in model.parameters().values())
    with pytest.raises(ValueError, match=rf"\({P},\)"):
        op @ xp.asarray(np.zeros(5))
    with pytest.raises(KeyError, match="valid names"):
        op @ {"9.weight": xp.asarray(np.zeros(3))}
    with pytest.raises(ValueError, match="per_sample"):
        ha.parameter_hessian(model, x, blocks="full", per_sample=True)
