"""A Laplace approximation of predictive uncertainty from the Gauss-Newton matrix.

A small tanh network is fitted to noisy 1-D data with a gap in the middle. Around the
trained weights the posterior is approximated by a Gaussian whose precision is the
generalized Gauss-Newton matrix (``ha.gauss_newton``) over the noise variance plus the prior
precision. The predictive variance at a new input is ``J Σ Jᵀ + σ²`` with ``J`` the Jacobian
of the network output with respect to all parameters (``ha.jacobian(..., wrt=name)``).

Run ``python docs/examples/laplace.py [--small] [--out DIR]``; it writes ``laplace.png``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

# The matrices here are small: on a busy machine, BLAS threads cost more than they save.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import hessarray as ha  # noqa: E402

SIGMA = 0.1  # standard deviation of the observation noise (known here)


def truth(x: np.ndarray) -> np.ndarray:
    """The function the data are drawn from."""
    return np.sin(2.0 * x) + 0.2 * x


def sample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy observations at ``x``."""
    return truth(x) + SIGMA * rng.standard_normal(x.shape)


def build(theta: np.ndarray, shapes: dict[str, tuple[int, ...]], y: np.ndarray | None = None) -> ha.Sequential:
    """The 1 -> n -> n -> 1 tanh network with flat weights ``theta``; with ``y``, ending in the squared error."""
    p, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        p[name] = theta[start : start + size].reshape(shape)
        start += size
    layers = [
        ha.Dense(p["0.weight"], p["0.bias"]),
        ha.Tanh(),
        ha.Dense(p["2.weight"], p["2.bias"]),
        ha.Tanh(),
        ha.Dense(p["4.weight"], p["4.bias"]),
    ]
    return ha.Sequential(*layers, ha.MSELoss(y)) if y is not None else ha.Sequential(*layers)


def jacobian(theta: np.ndarray, shapes: dict[str, tuple[int, ...]], x: np.ndarray) -> np.ndarray:
    """``(B, P)``: the derivative of each sample's output with respect to every parameter."""
    net = build(theta, shapes)
    return np.concatenate([ha.jacobian(net, x, wrt=name).reshape(x.shape[0], -1) for name in shapes], axis=1)


class Posterior:
    """The negative log posterior ``E(θ) = Σ_b (f_b - y_b)² / (2σ²) + α |θ|² / 2`` and its Gauss-Newton matrix."""

    def __init__(self, x: np.ndarray, y: np.ndarray, shapes: dict[str, tuple[int, ...]], alpha: float) -> None:
        self.x, self.y, self.shapes, self.alpha = x, y, shapes, alpha

    def energy(self, theta: np.ndarray) -> float:
        # MSELoss gives (f_b - y_b)² per sample.
        data = np.sum(build(theta, self.shapes, self.y)(self.x)) / (2 * SIGMA**2)
        return float(data + 0.5 * self.alpha * theta @ theta)

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        model = build(theta, self.shapes, self.y)
        g = np.concatenate([ha.gradient(model, self.x, wrt=name).ravel() for name in self.shapes])
        return g / (2 * SIGMA**2) + self.alpha * theta

    def likelihood_precision(self, theta: np.ndarray) -> np.ndarray:
        """``Σ_b J_bᵀ J_b / σ²``: the Gauss-Newton matrix of ``Σ (f - y)²`` is ``2 Σ JᵀJ``."""
        return ha.gauss_newton(build(theta, self.shapes, self.y), self.x, blocks="full", flat=True) / (2 * SIGMA**2)


def train(post: Posterior, theta: np.ndarray, iters: int) -> np.ndarray:
    """Levenberg-Marquardt: Gauss-Newton steps ``(G + αI + μI) d = -∇E`` with adaptive damping ``μ``."""
    mu, energy = 1.0, post.energy(theta)
    eye = np.eye(theta.size)
    for _ in range(iters):
        g = post.gradient(theta)
        a = post.likelihood_precision(theta) + post.alpha * eye
        for _retry in range(30):
            step = np.linalg.solve(a + mu * eye, -g)
            trial = post.energy(theta + step)
            if trial < energy:
                theta, energy, mu = theta + step, trial, max(mu / 3.0, 1e-8)
                break
            mu *= 4.0
    return theta


def log_evidence(alpha: float, lik_eigs: np.ndarray, fit: float, sq_norm: float, n: int) -> float:
    """Laplace estimate of ``log p(y | α)`` at fixed weights, from the eigenvalues of ``Σ JᵀJ / σ²``."""
    p = lik_eigs.size
    log_lik = -fit / (2 * SIGMA**2) - 0.5 * n * np.log(2 * np.pi * SIGMA**2)
    log_prior = -0.5 * alpha * sq_norm + 0.5 * p * np.log(alpha)
    return float(log_lik + log_prior - 0.5 * np.sum(np.log(lik_eigs + alpha)))


def report(name: str, y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
    """Coverage of the 1σ and 2σ bands and the mean Gaussian negative log-likelihood."""
    z = np.abs(y - mean) / np.sqrt(var)
    nll = np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (y - mean) ** 2 / var)
    print(f"  {name:28s} {np.mean(z <= 1):6.1%} {np.mean(z <= 2):6.1%} {nll:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (CI)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for laplace.png")
    args = parser.parse_args()
    n, width, iters, n_test = (40, 8, 30, 200) if args.small else (120, 16, 150, 2000)

    rng = np.random.default_rng(1)
    # Training data on [-3, -1] and [1, 3]: nothing in the gap between.
    x = np.concatenate([rng.uniform(-3, -1, (n // 2, 1)), rng.uniform(1, 3, (n - n // 2, 1))])
    y = sample(x, rng)
    params = {
        "0.weight": rng.standard_normal((width, 1)),
        "0.bias": rng.standard_normal(width),
        "2.weight": rng.standard_normal((width, width)) / np.sqrt(width),
        "2.bias": np.zeros(width),
        "4.weight": rng.standard_normal((1, width)) / np.sqrt(width),
        "4.bias": np.zeros(1),
    }
    shapes = {name: p.shape for name, p in params.items()}
    theta = np.concatenate([p.ravel() for p in params.values()])
    post = Posterior(x, y, shapes, alpha=1.0)
    print(f"network 1 -> {width} -> {width} -> 1 (tanh), {theta.size} parameters, {n} samples, noise σ = {SIGMA}")

    theta = train(post, theta, iters)
    fit = float(np.sum((build(theta, shapes)(x) - y) ** 2))
    print(f"MAP fit after {iters} Gauss-Newton steps: training RMSE {np.sqrt(fit / n):.4f}")

    # The Gauss-Newton matrix is Σ_b J_bᵀ J_b: check it against the per-sample Jacobians.
    lik = post.likelihood_precision(theta)
    j_train = jacobian(theta, shapes, x)
    gap = np.linalg.norm(lik - j_train.T @ j_train / SIGMA**2) / np.linalg.norm(lik)
    print(f"check: |GGN/(2σ²) - JᵀJ/σ²| / |JᵀJ/σ²| = {gap:.1e}")

    # Post-hoc prior precision: the α that maximises the Laplace evidence at the trained weights.
    lik_eigs = np.clip(np.linalg.eigvalsh(lik), 0.0, None)
    alphas = np.logspace(-3, 3, 61)
    evidence = [log_evidence(a, lik_eigs, fit, float(theta @ theta), n) for a in alphas]
    alpha = float(alphas[int(np.argmax(evidence))])
    print(f"prior precision α = {alpha:.3g} (largest Laplace evidence on a grid of 61 values, trained with α = 1)")
    print(f"posterior precision: eigenvalues {np.min(lik_eigs) + alpha:.3g} .. {np.max(lik_eigs) + alpha:.3g}")
    cov = np.linalg.inv(lik + alpha * np.eye(theta.size))

    def predict(xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and epistemic variance ``diag(J Σ Jᵀ)`` of the network output."""
        j = jacobian(theta, shapes, xs)
        return build(theta, shapes)(xs)[:, 0], np.einsum("bp,pq,bq->b", j, cov, j)

    # Held-out points: inside the training intervals, in the gap, and just beyond the data.
    regions = {
        "inside the data": np.concatenate([rng.uniform(-3, -1, n_test // 2), rng.uniform(1, 3, n_test // 2)]),
        "in the gap (-1, 1)": rng.uniform(-1, 1, n_test),
        "beyond the data (3, 4)": rng.uniform(3, 4, n_test),
    }
    print("\nheld-out points          band:   ±1σ    ±2σ     NLL  (Gaussian: 68.3%, 95.4%)")
    for name, xs in regions.items():
        xs = xs[:, None]
        ys = sample(xs, rng)[:, 0]
        mean, epistemic = predict(xs)
        print(f"{name}:")
        report("noise only (σ²)", ys, mean, np.full_like(mean, SIGMA**2))
        report("Laplace (J Σ Jᵀ + σ²)", ys, mean, epistemic + SIGMA**2)

    grid = np.linspace(-4, 4, 400)[:, None]
    mean, epistemic = predict(grid)
    total = np.sqrt(epistemic + SIGMA**2)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.fill_between(grid[:, 0], mean - 2 * total, mean + 2 * total, color="C0", alpha=0.25, label="±2σ, Laplace")
    ax.fill_between(grid[:, 0], mean - 2 * SIGMA, mean + 2 * SIGMA, color="C1", alpha=0.35, label="±2σ, noise only")
    ax.plot(grid[:, 0], truth(grid[:, 0]), "k--", lw=1, label="true function")
    ax.plot(grid[:, 0], mean, "C0", lw=1.5, label="network (MAP)")
    ax.plot(x[:, 0], y[:, 0], "k.", ms=4, label="training data")
    ax.axvspan(-1, 1, color="gray", alpha=0.08)
    ax.set_ylim(-3, 3)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "laplace.png", dpi=100)
    print("\nwrote laplace.png")


if __name__ == "__main__":
    main()
