"""Each layer type on its own, on every backend, against torch.func autodiff and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from backends import backend_cases, materialize
from reference import assert_close, build_hessarray, cached_torch_reference

import hessarray as ha

RTOL = 1e-10
MODES = ("forward", "reverse")

# One set of shapes for every case (and the other test files), so that eager JAX compiles each
# operation once.
_rng = np.random.default_rng(1)
D, N, M, BATCH = 3, 5, 2, 4
W1 = _rng.standard_normal((N, D)) / np.sqrt(D)
B1 = _rng.standard_normal(N) * 0.5
W2 = _rng.standard_normal((M, N)) / np.sqrt(N)
B2 = _rng.standard_normal((M, 1)) * 0.5
X = _rng.standard_normal((BATCH, D))
WR = _rng.standard_normal((D, D))  # square weights for residual blocks
WA, WB, WC = (_rng.standard_normal((D, D)) / 2 for _ in range(3))
TARGET = _rng.standard_normal((BATCH, D))
CLASSES = _rng.integers(0, D, size=BATCH)
PROBS = _rng.dirichlet(np.ones(D), size=BATCH)


def _template(act):
    """``dense → act → dense → act``: a vector output, activations on mixed-sign inputs."""
    return [("dense", W1, B1), act, ("dense", W2, B2), act]


def _positive(act):
    """The same with strictly positive inputs to ``act`` (for non-integer powers)."""
    return [("dense", W1, B1), ("act", "sigmoid"), act, ("dense", W2, B2), ("act", "exp"), act]


ACTIVATION_CASES = {
    "tanh": _template(("act", "tanh")),
    "sigmoid": _template(("act", "sigmoid")),
    "softplus": _template(("act", "softplus")),
    "softplus_beta2.5": _template(("act", "softplus", 2.5)),
    "relu": _template(("act", "relu")),
    "leaky_relu_default": _template(("act", "leaky_relu")),
    "leaky_relu_0.3": _template(("act", "leaky_relu", 0.3)),
    "elu": _template(("act", "elu")),
    "elu_alpha0.5": _template(("act", "elu", 0.5)),
    "silu": _template(("act", "silu")),
    "logcosh": _template(("act", "logcosh")),
    "sin": _template(("act", "sin")),
    "cos": _template(("act", "cos")),
    "exp": _template(("act", "exp")),
    "square": _template(("act", "square")),
    "power0": _template(("act", "power", 0.0)),
    "power1": _template(("act", "power", 1.0)),
    "power2": _template(("act", "power", 2.0)),
    "power3": _template(("act", "power", 3.0)),
    "power5": _template(("act", "power", 5.0)),
    "power2.5_positive": _positive(("act", "power", 2.5)),
    "power0.5_positive": _positive(("act", "power", 0.5)),
    "power-1.5_positive": _positive(("act", "power", -1.5)),
    "identity": _template(("act", "identity")),
    "elementwise_user": _template(("act", "user")),
}


#: on the slow backends: cases that between them use every array function of the activations
SLOW_ACTIVATION_CASES = [
    "tanh",
    "softplus_beta2.5",
    "leaky_relu_0.3",
    "elu_alpha0.5",
    "logcosh",
    "power0",
    "power2.5_positive",
    "elementwise_user",
]


@pytest.mark.parametrize("xp,case", backend_cases(ACTIVATION_CASES, SLOW_ACTIVATION_CASES), indirect=["xp"])
def test_activation_against_autodiff(xp, case):
    spec = ACTIVATION_CASES[case]
    ref = cached_torch_reference(spec, X, "0.weight")
    model = build_hessarray(spec, xp.asarray)
    x = xp.asarray(X)
    got = {}
    for mode in MODES:
        got[mode] = (ha.derivatives(model, x, mode=mode), ha.derivatives(model, x, wrt="0.weight", mode=mode))
    got = materialize(xp, got)
    for mode, (d, p) in got.items():
        for name, a, b in [
            ("value", d.value, ref["value"]),
            ("jacobian", d.jacobian, ref["jacobian"]),
            ("hessian", d.hessian, ref["hessian"]),
            ("d/dW value", p.value, ref["p_value"]),
            ("d/dW gradient", p.jacobian, ref["p_grad"]),
            ("d/dW hessian", p.hessian, ref["p_hess"]),
        ]:
            assert_close(a, b, RTOL, f"{case} {name} ({mode}) on {xp.name}")


def test_activation_cases_have_curvature_where_expected():
    """The reference Hessians of the curved cases are not zero (so the comparison can fail)."""
    flat = {"relu", "leaky_relu_default", "leaky_relu_0.3", "power0", "power1", "identity"}
    for case, spec in ACTIVATION_CASES.items():
        h = cached_torch_reference(spec, X, "0.weight")["hessian"]
        assert (np.max(np.abs(h)) == 0) == (case in flat), case


# -- numerically delicate activations at large |z| ---------------------------------------------
Z = np.array([[-800.0, -50.0, -1e-3, 0.0, 1e-3, 50.0, 800.0]])


def _sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -z))


STABLE = {
    # name: (layer, f, f', f'') written with NumPy's stable primitives
    "tanh": (ha.Tanh(), np.tanh, lambda z: 1 / np.cosh(z) ** 2, lambda z: -2 * np.tanh(z) / np.cosh(z) ** 2),
    "sigmoid": (
        ha.Sigmoid(),
        _sigmoid,
        lambda z: _sigmoid(z) * _sigmoid(-z),
        lambda z: _sigmoid(z) * _sigmoid(-z) * (1 - 2 * _sigmoid(z)),
    ),
    "softplus": (
        ha.Softplus(),
        lambda z: np.logaddexp(0.0, z),
        _sigmoid,
        lambda z: _sigmoid(z) * _sigmoid(-z),
    ),
    "softplus_beta3": (
        ha.Softplus(3.0),
        lambda z: np.logaddexp(0.0, 3 * z) / 3,
        lambda z: _sigmoid(3 * z),
        lambda z: 3 * _sigmoid(3 * z) * _sigmoid(-3 * z),
    ),
    "logcosh": (
        ha.LogCosh(),
        lambda z: np.logaddexp(z, -z) - np.log(2.0),
        np.tanh,
        lambda z: 1 - np.tanh(z) ** 2,
    ),
    "silu": (
        ha.SiLU(),
        lambda z: z * _sigmoid(z),
        lambda z: _sigmoid(z) + z * _sigmoid(z) * _sigmoid(-z),
        lambda z: _sigmoid(z) * _sigmoid(-z) * (2 + z * (1 - 2 * _sigmoid(z))),
    ),
    "elu": (
        ha.ELU(1.5),
        lambda z: np.where(z > 0, z, 1.5 * np.expm1(np.minimum(z, 0))),
        lambda z: np.where(z > 0, 1.0, 1.5 * np.exp(np.minimum(z, 0))),
        lambda z: np.where(z > 0, 0.0, 1.5 * np.exp(np.minimum(z, 0))),
    ),
}


@pytest.mark.parametrize("name", list(STABLE))
def test_activation_stable_at_large_inputs(xp, name):
    """No overflow to inf/NaN at |z| = 800, and the exact values there."""
    layer, f, df, d2f = STABLE[name]
    z = Z[0]
    with np.errstate(over="ignore", under="ignore"):
        want_f, want_df, want_d2f = f(z), df(z), d2f(z)
    # Sum of the activation: value Σ f, gradient f', Hessian diag f''
    d = materialize(xp, ha.derivatives(ha.Sequential(layer, ha.Sum()), xp.asarray(Z)))
    assert np.all(np.isfinite(d.value)) and np.all(np.isfinite(d.jacobian)) and np.all(np.isfinite(d.hessian))
    # (tails such as sigmoid(-50) = 2e-22 need only be right to rounding of numbers of size 1)
    assert_close(d.value, [np.sum(want_f)], 1e-14, "value")
    assert_close(d.jacobian[0], want_df, 1e-14, "first derivative")
    assert_close(d.hessian[0], np.diag(want_d2f), 1e-14, "second derivative")
    # the elementwise output itself
    y = xp.to_numpy(ha.Sequential(layer)(xp.asarray(Z)))
    assert_close(y[0], want_f, 1e-14, "output")


# -- user elementwise functions ---------------------------------------------------------------
def test_elementwise_constant_derivatives(xp):
    """``df``/``d2f`` may return Python numbers; they are broadcast to the input's shape."""
    layer = ha.Elementwise(lambda z: 0.5 * z * z + z, lambda z: z + 1.0, lambda z: 1.0, name="quad")
    model = ha.Sequential(ha.Dense(xp.asarray(W1)), layer, ha.Sum())
    d = materialize(xp, ha.derivatives(model, xp.asarray(X), mode="reverse"))
    f = materialize(xp, ha.derivatives(model, xp.asarray(X), mode="forward"))
    z = X @ W1.T
    for r in (d, f):
        assert_close(r.value, np.sum(0.5 * z * z + z, axis=1), RTOL, "value")
        assert_close(r.jacobian, (z + 1.0) @ W1, RTOL, "gradient")
        assert_close(r.hessian, np.broadcast_to(W1.T @ W1, (BATCH, D, D)), RTOL, "hessian")
    assert "quad" in repr(layer)


def test_elementwise_uses_the_given_derivatives():
    """hessarray trusts ``df`` and ``d2f``: deliberately wrong ones change the result."""
    x = np.array([[0.3, -0.2]])
    right = ha.Elementwise(np.sin, np.cos, lambda z: -np.sin(z))
    wrong = ha.Elementwise(np.sin, np.cos, lambda z: np.sin(z))
    h_right = ha.hessian(ha.Sequential(right, ha.Sum()), x)
    h_wrong = ha.hessian(ha.Sequential(wrong, ha.Sum()), x)
    np.testing.assert_allclose(h_right[0], np.diag(-np.sin(x[0])), rtol=1e-15)
    np.testing.assert_allclose(h_wrong[0], np.diag(np.sin(x[0])), rtol=1e-15)


# -- Dense ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", ["none", "row", "column"])
def test_dense_affine(xp, bias):
    b = {"none": None, "row": B1, "column": B1[:, None]}[bias]
    layer = ha.Dense(xp.asarray(W1), None if b is None else xp.asarray(b))
    model = ha.Sequential(layer)
    assert list(model.parameters()) == (["0.weight"] if b is None else ["0.weight", "0.bias"])
    x = xp.asarray(X)
    d = materialize(xp, ha.derivatives(model, x))
    assert_close(d.value, X @ W1.T + (0 if b is None else B1), 1e-14, "value")
    assert_close(d.jacobian, np.broadcast_to(W1, (BATCH, N, D)), 0, "jacobian")
    assert_close(d.hessian, np.zeros((BATCH, N, D, D)), 0, "hessian")
    if b is not None:
        # the gradient with respect to the bias has the bias's own shape: Σ_b Σ_o dy_o/db = 1
        g = xp.to_numpy(ha.gradient(model, x, wrt="0.bias"))
        assert g.shape == b.shape
        assert_close(g, np.full(b.shape, float(BATCH)), 0, "bias gradient")
        h = xp.to_numpy(ha.hessian(model, x, wrt="0.bias"))
        assert h.shape == b.shape + b.shape
        assert_close(h, np.zeros(b.shape + b.shape), 0, "bias hessian")


def test_dense_weight_hessian_is_kronecker(xp):
    """For ``Σ_b (Wx_b)²_0``, d²/dW² = 2 Σ_b e0 e0ᵀ ⊗ x_b x_bᵀ."""
    model = ha.Sequential(ha.Dense(xp.asarray(W1)), ha.Square(), ha.Dense(xp.asarray(np.eye(N)[:1])), ha.Sum())
    h = xp.to_numpy(ha.hessian(model, xp.asarray(X), wrt="0.weight"))
    want = np.zeros((N, D, N, D))
    want[0, :, 0, :] = 2 * X.T @ X
    assert_close(h, want, 1e-13, "weight hessian")


# -- Residual ------------------------------------------------------------------------------------
@pytest.mark.parametrize("h", [1.0, 0.5, -2.0, 0.0])
def test_residual_step(xp, h):
    spec = [("residual", h, [("dense", WR, None), ("act", "tanh")]), ("sum",)]
    ref = cached_torch_reference(spec, X, "0.0.weight")
    model = build_hessarray(spec, xp.asarray)
    assert list(model.parameters()) == ["0.0.weight"]
    for mode in MODES:
        d = materialize(xp, ha.derivatives(model, xp.asarray(X), mode=mode))
        p = materialize(xp, ha.derivatives(model, xp.asarray(X), wrt="0.0.weight", mode=mode))
        assert_close(d.value, ref["value"], RTOL, "value")
        assert_close(d.jacobian, ref["jacobian"], RTOL, "jacobian")
        assert_close(d.hessian, ref["hessian"], RTOL, "hessian")
        assert_close(p.jacobian, ref["p_grad"], RTOL, "d/dW")
        assert_close(p.hessian, ref["p_hess"], RTOL, "d2/dW2")
    if h == 0.0:
        assert_close(d.jacobian, np.ones((BATCH, D)), 0, "h=0 is the identity")


def test_nested_residual_names_and_derivatives(xp):
    inner = ("residual", 0.5, [("dense", WB, B1[:D]), ("act", "sin")])
    spec = [("dense", WA, None), ("residual", 0.7, [("act", "tanh"), inner, ("dense", WC, None)]), ("sum",)]
    model = build_hessarray(spec, xp.asarray)
    assert list(model.parameters()) == ["0.weight", "1.1.0.weight", "1.1.0.bias", "1.2.weight"]
    for wrt in ["1.1.0.weight", "1.1.0.bias", "1.2.weight", "0.weight"]:
        ref = cached_torch_reference(spec, X, wrt)
        for mode in MODES:
            p = materialize(xp, ha.derivatives(model, xp.asarray(X), wrt=wrt, mode=mode))
            assert_close(p.jacobian, ref["p_grad"], RTOL, f"{wrt} gradient ({mode})")
            assert_close(p.hessian, ref["p_hess"], RTOL, f"{wrt} hessian ({mode})")


def test_residual_remembers_only_the_adjoint_it_pulled(xp):
    """A residual block reuses its inner adjoints for the ``g`` it last pulled back, and only
    for that one: pushing with another adjoint, or pulling one in between, is still exact."""
    block = ha.Residual(ha.Dense(xp.asarray(WR)), ha.Tanh(), h=0.5)
    rng = np.random.default_rng(5)
    x = xp.asarray(X)
    t = xp.asarray(rng.standard_normal((2, BATCH, D)))
    g1, g2 = (xp.asarray(rng.standard_normal((BATCH, 1, D))) for _ in range(2))

    def fresh(g):
        _, cache = block.forward(x)
        return block.pull(cache, g), block.push(cache, t, g)

    _, cache = block.forward(x)
    for g, other in ((g1, g2), (g2, g1), (g1, g1)):
        pulled = block.pull(cache, other)
        assert block.pull(cache, other) is pulled  # remembered
        t_out, factors = block.push(cache, t, g)
        want_pull, (want_t, want_factors) = fresh(g)
        assert_close(xp.to_numpy(block.pull(cache, g)), xp.to_numpy(want_pull), 0, "pull")
        assert_close(xp.to_numpy(t_out), xp.to_numpy(want_t), 0, "push")
        for got, want in zip(factors, want_factors, strict=True):
            for a, b in zip(got, want, strict=True):
                assert_close(xp.to_numpy(a), xp.to_numpy(b), 0, "curvature factor")


# -- terminal layers ---------------------------------------------------------------------------
def test_sum_layer(xp):
    d = materialize(xp, ha.derivatives(ha.Sequential(ha.Sum()), xp.asarray(X)))
    assert_close(d.value, X.sum(axis=1), 1e-15, "value")
    assert_close(d.jacobian, np.ones((BATCH, D)), 0, "jacobian")
    assert_close(d.hessian, np.zeros((BATCH, D, D)), 0, "hessian")


@pytest.mark.parametrize("shared", [False, True], ids=["per_sample_target", "shared_target"])
def test_mse_loss(xp, shared):
    target = TARGET[0] if shared else TARGET
    model = ha.Sequential(ha.MSELoss(xp.asarray(target)))
    for mode in MODES:
        d = materialize(xp, ha.derivatives(model, xp.asarray(X), mode=mode, chunk_size=3))
        assert_close(d.value, np.mean((X - target) ** 2, axis=1), 1e-15, "value")
        assert_close(d.jacobian, 2 * (X - target) / D, 1e-15, "gradient")
        assert_close(d.hessian, np.broadcast_to(2 * np.eye(D) / D, (BATCH, D, D)), 1e-15, "hessian")


def _ce_expected(x, t):
    lse = np.logaddexp.reduce(x, axis=1)
    p = np.exp(x - lse[:, None])
    mass = t.sum(axis=1)
    value = mass * lse - np.sum(t * x, axis=1)
    grad = mass[:, None] * p - t
    hess = mass[:, None, None] * (np.einsum("bi,ij->bij", p, np.eye(x.shape[1])) - p[:, :, None] * p[:, None, :])
    return value, grad, hess


@pytest.mark.parametrize("labels", ["integer", "one_hot", "probabilities", "unnormalised", "shared_row"])
def test_softmax_cross_entropy(xp, labels):
    rows = {
        "integer": np.eye(D)[CLASSES],
        "one_hot": np.eye(D)[CLASSES],
        "probabilities": PROBS,
        "unnormalised": 2.5 * PROBS,  # the value scales with Σt
        "shared_row": np.broadcast_to(PROBS[0], (BATCH, D)),  # one (m,) row for every sample
    }[labels]
    arg = {"integer": CLASSES, "shared_row": PROBS[0]}.get(labels, rows)
    model = ha.Sequential(ha.SoftmaxCrossEntropy(xp.asarray(arg)))
    x = 3 * X
    want = _ce_expected(x, rows)
    for mode in MODES:
        d = materialize(xp, ha.derivatives(model, xp.asarray(x), mode=mode, chunk_size=3))
        for a, b, what in zip(d, want, ("value", "gradient", "hessian"), strict=True):
            assert_close(a, b, 1e-14, f"{what} ({mode})")


def test_softmax_cross_entropy_large_logits(xp):
    """Logits of ±1000 neither overflow nor lose the exact answer."""
    x = np.array([[1000.0, 0.0, -1000.0], [0.0, 1000.0, 999.0]])
    model = ha.Sequential(ha.SoftmaxCrossEntropy(xp.asarray(np.array([1, 2]))))
    d = materialize(xp, ha.derivatives(model, xp.asarray(x)))
    want = _ce_expected(x, np.eye(3)[[1, 2]])
    for a, b, what in zip(d, want, ("value", "gradient", "hessian"), strict=True):
        assert np.all(np.isfinite(a)), what
        assert_close(a, b, 1e-12, what)


def _ce_exact(W, shift, x, labels):
    """Gradient and Hessian in x of ``CE(softmax(W x + shift))``, in 60-digit arithmetic."""
    import mpmath  # a test dependency (pyproject: test extra)

    with mpmath.workdps(60):
        grads, hessians = [], []
        for xb, label in zip(x, labels, strict=True):
            z = [
                mpmath.fsum(mpmath.mpf(w) * mpmath.mpf(v) for w, v in zip(row, xb)) + mpmath.mpf(s0)
                for row, s0 in zip(W, shift)
            ]
            e = [mpmath.exp(zi) for zi in z]
            p = [ei / mpmath.fsum(e) for ei in e]
            dz = [pi - (1 if i == label else 0) for i, pi in enumerate(p)]
            hz = [[(pi if i == j else 0) - pi * pj for j, pj in enumerate(p)] for i, pi in enumerate(p)]
            n, d = len(p), len(xb)
            grads.append([float(mpmath.fsum(dz[i] * W[i][a] for i in range(n))) for a in range(d)])
            pairs = [(i, j) for i in range(n) for j in range(n)]
            hessians.append(
                [
                    [float(mpmath.fsum(W[i][a] * hz[i][j] * W[j][c] for i, j in pairs)) for c in range(d)]
                    for a in range(d)
                ]
            )
    return np.array(grads), np.array(hessians)


@pytest.mark.parametrize("gap", [23.0, 40.0, 800.0])  # the other classes' p: 1e-10, 4e-18, 0
def test_softmax_cross_entropy_saturated_with_large_tangents(xp, gap):
    """Large tangents into a saturated softmax: ``Tᵀ(diag p - ppᵀ)T`` is tiny next to
    ``|T|²``. Written as the difference of its two halves it kept no correct digit (and
    float64 autodiff is off too here, so the reference is computed in 60 digits)."""
    rng = np.random.default_rng(11)
    W = 1e6 * rng.standard_normal((3, 2))
    shift = np.array([gap, 0.0, -1.0])  # logits W x + shift; W x is small for this x
    x = 1e-12 * rng.standard_normal((BATCH, 2))
    labels = [0, 1, 0, 2]
    grad, hess = _ce_exact(W, shift, x, labels)
    ce = ha.SoftmaxCrossEntropy(xp.asarray(np.array(labels)))
    model = ha.Sequential(ha.Dense(xp.asarray(W), xp.asarray(shift)), ce)
    for mode in MODES:
        d = materialize(xp, ha.derivatives(model, xp.asarray(x), mode=mode))
        assert_close(d.jacobian, grad, RTOL, f"gradient ({mode})")
        assert_close(d.hessian, hess, RTOL, f"hessian ({mode})")
    v = rng.standard_normal((BATCH, 2))
    hv = materialize(xp, ha.hvp(model, xp.asarray(x), xp.asarray(v)))
    assert_close(hv, np.einsum("bij,bj->bi", hess, v), RTOL, "hvp")


def test_integer_label_for_one_sample(xp):
    """A 0-d integer label goes with a 1-D ``x``."""
    x = 3 * X[0]
    model = ha.Sequential(ha.SoftmaxCrossEntropy(xp.asarray(np.array(2))))
    d = materialize(xp, ha.derivatives(model, xp.asarray(x)))
    want = _ce_expected(x[None], np.eye(D)[[2]])
    assert d.value.shape == () and d.jacobian.shape == (D,) and d.hessian.shape == (D, D)
    for a, b, what in zip(d, want, ("value", "gradient", "hessian"), strict=True):
        assert_close(a, b[0], 1e-14, what)
