"""Newton's method with the exact parameter Hessian, against gradient descent and Adam.

A small tanh network is fitted to noisy samples of a smooth 1-D function by least squares.
Newton's method uses the exact Hessian of the loss with respect to all parameters
(``ha.parameter_hessian(..., blocks="full", flat=True)``), shifted where it is indefinite and
damped Levenberg-Marquardt style; gradient descent and Adam use the gradient only.

Run ``python docs/examples/newton.py [--small] [--out DIR]``; it writes ``newton.png``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# The matrices here are small: on a busy machine, BLAS threads cost more than they save.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import hessarray as ha  # noqa: E402

NOISE = 0.1  # standard deviation of the noise on the targets


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy samples of a smooth function on [-2, 2]."""
    x = np.sort(rng.uniform(-2.0, 2.0, (n, 1)), axis=0)
    y = np.sin(3.0 * x) + 0.5 * np.sin(7.0 * x) + NOISE * rng.standard_normal((n, 1))
    return x, y


def init_params(width: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Weights of a 1 -> width -> width -> 1 tanh network, in ``model.parameters()`` order."""
    return {
        "0.weight": rng.standard_normal((width, 1)),
        "0.bias": rng.standard_normal(width),
        "2.weight": rng.standard_normal((width, width)) / np.sqrt(width),
        "2.bias": np.zeros(width),
        "4.weight": rng.standard_normal((1, width)) / np.sqrt(width),
        "4.bias": np.zeros(1),
    }


def build(theta: np.ndarray, shapes: dict[str, tuple[int, ...]], y: np.ndarray) -> ha.Sequential:
    """The network with the flat parameter vector ``theta``, ending in the squared error against ``y``."""
    p, start = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape))
        p[name] = theta[start : start + size].reshape(shape)
        start += size
    return ha.Sequential(
        ha.Dense(p["0.weight"], p["0.bias"]),
        ha.Tanh(),
        ha.Dense(p["2.weight"], p["2.bias"]),
        ha.Tanh(),
        ha.Dense(p["4.weight"], p["4.bias"]),
        ha.MSELoss(y),
    )


class Problem:
    """Mean squared error ``L(θ) = (1/N) Σ_b (f(x_b; θ) - y_b)²`` and its derivatives."""

    def __init__(self, x: np.ndarray, y: np.ndarray, shapes: dict[str, tuple[int, ...]]) -> None:
        self.x, self.y, self.shapes = x, y, shapes
        self.n = x.shape[0]

    def loss(self, theta: np.ndarray) -> float:
        return float(np.mean(build(theta, self.shapes, self.y)(self.x)))

    def gradient(self, theta: np.ndarray) -> np.ndarray:
        model = build(theta, self.shapes, self.y)
        # The gradient of the batch-summed loss, one parameter at a time, flattened in order.
        return np.concatenate([ha.gradient(model, self.x, wrt=name).ravel() for name in self.shapes]) / self.n

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        model = build(theta, self.shapes, self.y)
        return ha.parameter_hessian(model, self.x, blocks="full", flat=True) / self.n


def newton(problem: Problem, theta: np.ndarray, iters: int) -> tuple[list[float], list[float], int]:
    """Damped Newton on ``|H|``: solve ``(|H| + μ I) d = -g``.

    ``|H| = Q |Λ| Qᵀ`` flips the sign of the negative eigenvalues, so the step still goes
    downhill where the Hessian is indefinite (a "saddle-free" Newton step). ``μ`` shrinks
    after a step that lowers the loss and grows (the step is retried) after one that does
    not, as in Levenberg-Marquardt. One eigendecomposition per iteration serves every retry.
    Returns the loss after each iteration, the cumulative wall time and the number of
    iterations whose Hessian was indefinite.
    """
    mu, losses, times, indefinite = 1e-2, [problem.loss(theta)], [0.0], 0
    start = time.perf_counter()
    for _ in range(iters):
        g = problem.gradient(theta)
        lam, q = np.linalg.eigh(problem.hessian(theta))
        indefinite += bool(lam[0] < 0)
        qg = q.T @ g
        for _retry in range(30):
            step = -q @ (qg / (np.abs(lam) + mu))
            if problem.loss(theta + step) < losses[-1]:
                theta, mu = theta + step, max(mu / 3.0, 1e-10)
                break
            mu *= 4.0
        losses.append(problem.loss(theta))
        times.append(time.perf_counter() - start)
    return losses, times, indefinite


def gradient_descent(problem: Problem, theta: np.ndarray, iters: int, lr: float) -> tuple[list[float], list[float]]:
    """Plain gradient descent with a fixed step."""
    losses, times = [problem.loss(theta)], [0.0]
    start = time.perf_counter()
    for _ in range(iters):
        theta = theta - lr * problem.gradient(theta)
        losses.append(problem.loss(theta))
        times.append(time.perf_counter() - start)
    return losses, times


def adam(problem: Problem, theta: np.ndarray, iters: int, lr: float) -> tuple[list[float], list[float]]:
    """Adam with the usual moment decay rates (0.9, 0.999)."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    losses, times = [problem.loss(theta)], [0.0]
    start = time.perf_counter()
    for t in range(1, iters + 1):
        g = problem.gradient(theta)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        losses.append(problem.loss(theta))
        times.append(time.perf_counter() - start)
    return losses, times


def first_below(losses: list[float], times: list[float], target: float) -> str:
    """``"<iterations> iterations, <seconds> s"`` to reach ``target``, or that it was not reached."""
    for i, value in enumerate(losses):
        if value <= target:
            return f"{i:6d} iterations, {times[i]:7.3f} s"
    return f"not reached in {len(losses) - 1} iterations ({times[-1]:.3f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (CI)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for newton.png")
    args = parser.parse_args()
    n, width, newton_iters, first_order_iters = (60, 8, 30, 400) if args.small else (200, 16, 100, 3000)

    rng = np.random.default_rng(0)
    x, y = make_data(n, rng)
    params = init_params(width, rng)
    shapes = {name: p.shape for name, p in params.items()}
    theta0 = np.concatenate([p.ravel() for p in params.values()])
    problem = Problem(x, y, shapes)
    print(f"network 1 -> {width} -> {width} -> 1 (tanh), {theta0.size} parameters, {n} samples")
    print(f"noise variance {NOISE**2:.3g}")

    # Check the exact Hessian against central differences of the gradient along a random direction.
    h0 = problem.hessian(theta0)
    v = rng.standard_normal(theta0.size)
    eps = 1e-5
    fd = (problem.gradient(theta0 + eps * v) - problem.gradient(theta0 - eps * v)) / (2 * eps)
    print(f"Hessian check: |H v - finite difference| / |H v| = {np.linalg.norm(h0 @ v - fd) / np.linalg.norm(fd):.1e}")
    lam0 = np.linalg.eigvalsh(h0)
    print(f"initial Hessian eigenvalues: min {lam0[0]:.3g}, max {lam0[-1]:.3g}")

    # Gradient descent with a step of 1/λ_max of the initial Hessian (a stable step for a quadratic).
    lr = 1.0 / lam0[-1]
    newton_losses, newton_times, indefinite = newton(problem, theta0, newton_iters)
    print(f"Newton: the Hessian was indefinite in {indefinite} of {newton_iters} iterations")
    runs = {
        "Newton (exact Hessian)": (newton_losses, newton_times),
        f"gradient descent (lr = 1/λ_max = {lr:.3g})": gradient_descent(problem, theta0, first_order_iters, lr),
        "Adam (lr = 0.01)": adam(problem, theta0, first_order_iters, 0.01),
    }
    target = 1.2 * NOISE**2
    print(f"\ntarget loss {target:.4g} (1.2 times the noise variance)")
    for label, (losses, times) in runs.items():
        per_iter = 1e3 * times[-1] / (len(losses) - 1)
        print(
            f"{label:45s} final loss {losses[-1]:.4g}, {per_iter:6.2f} ms/iteration, "
            f"target: {first_below(losses, times, target)}"
        )

    fig, (ax_iter, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, (losses, times) in runs.items():
        ax_iter.loglog(np.arange(1, len(losses) + 1), losses, label=label)
        ax_time.semilogy(times, losses, label=label)
    for ax in (ax_iter, ax_time):
        ax.axhline(target, color="gray", lw=0.8, ls="--")
        ax.set_ylabel("mean squared error")
        ax.grid(True, which="both", alpha=0.3)
    ax_iter.set_xlabel("iteration + 1")
    ax_time.set_xlabel("wall time (s)")
    ax_iter.legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "newton.png", dpi=100)
    print("\nwrote newton.png")


if __name__ == "__main__":
    main()
