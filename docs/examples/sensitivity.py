"""Input sensitivity: where a trained network curves most, from its input Hessian.

A tanh network is fitted to a function of two inputs whose curvature is concentrated on a
curved ridge. ``ha.hessian`` gives the ``2 x 2`` input Hessian at every point of a grid;
its eigenvalues (``numpy.linalg.eigvalsh``) are the principal curvatures of the fitted
surface, the one of largest magnitude says how strongly the output bends there, and its
eigenvector in which direction. ``ha.laplacian`` (the trace, computed without forming the
Hessian) is checked against the sum of the eigenvalues, and the network's curvature against
the target's exact one.

Run ``python docs/examples/sensitivity.py [--small] [--out DIR]``; it writes ``sensitivity.png``.
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

A = 2.0  # steepness of the ridge


def target(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``f = tanh(u)``, ``u = A (x₂ - x₁² + 1/2)``, and its exact Hessian ``(B, 2, 2)``."""
    u = A * (x[:, 1] - x[:, 0] ** 2 + 0.5)
    t = np.tanh(u)
    d1, d2 = 1 - t**2, -2 * t * (1 - t**2)  # tanh' and tanh''
    grad_u = np.stack([-2 * A * x[:, 0], np.full_like(u, A)], axis=1)
    hess_u = np.array([[-2 * A, 0.0], [0.0, 0.0]])
    hess = d1[:, None, None] * hess_u + d2[:, None, None] * grad_u[:, :, None] * grad_u[:, None, :]
    return t, hess


def build(theta: np.ndarray, shapes: dict[str, tuple[int, ...]], y: np.ndarray | None = None) -> ha.Sequential:
    """The 2 -> n -> n -> 1 tanh network with flat weights ``theta``, ending in the squared error or a sum."""
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
        ha.MSELoss(y) if y is not None else ha.Sum(),
    )


def fit(x: np.ndarray, y: np.ndarray, theta: np.ndarray, shapes: dict, iters: int, ridge: float = 1e-6) -> np.ndarray:
    """Levenberg-Marquardt on ``Σ (f - y)² + ridge |θ|²`` with the exact Gauss-Newton matrix."""

    def energy(th: np.ndarray) -> float:
        return float(np.sum(build(th, shapes, y)(x)) + ridge * th @ th)

    mu, current, eye = 1e-2, energy(theta), np.eye(theta.size)
    for _ in range(iters):
        model = build(theta, shapes, y)
        g = np.concatenate([ha.gradient(model, x, wrt=name).ravel() for name in shapes]) + 2 * ridge * theta
        a = ha.gauss_newton(model, x, blocks="full", flat=True) + 2 * ridge * eye
        for _retry in range(30):
            step = np.linalg.solve(a + mu * eye, -g)
            trial = energy(theta + step)
            if trial < current:
                theta, current, mu = theta + step, trial, max(mu / 3.0, 1e-10)
                break
            mu *= 4.0
    return theta


def largest(eigvals: np.ndarray) -> np.ndarray:
    """The eigenvalue of largest magnitude of each row, with its sign."""
    return np.take_along_axis(eigvals, np.argmax(np.abs(eigvals), axis=1)[:, None], axis=1)[:, 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (CI)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="folder for sensitivity.png")
    args = parser.parse_args()
    n, width, iters, side = (150, 10, 25, 40) if args.small else (600, 16, 120, 100)

    rng = np.random.default_rng(2)
    x = rng.uniform(-1.5, 1.5, (n, 2))
    y = target(x)[0][:, None]
    params = {
        "0.weight": rng.standard_normal((width, 2)),
        "0.bias": rng.standard_normal(width),
        "2.weight": rng.standard_normal((width, width)) / np.sqrt(width),
        "2.bias": np.zeros(width),
        "4.weight": rng.standard_normal((1, width)) / np.sqrt(width),
        "4.bias": np.zeros(1),
    }
    shapes = {name: p.shape for name, p in params.items()}
    theta = fit(x, y, np.concatenate([p.ravel() for p in params.values()]), shapes, iters)
    net = build(theta, shapes)  # ends in Sum(): one number per sample
    print(f"network 2 -> {width} -> {width} -> 1 (tanh), {theta.size} parameters, fitted to {n} samples")
    print(f"training RMSE after {iters} Gauss-Newton steps: {np.sqrt(np.mean((net(x) - y[:, 0]) ** 2)):.2e}")

    # Every point of a side x side grid: value, gradient and Hessian in one pass.
    ticks = np.linspace(-1.5, 1.5, side)
    grid = np.stack(np.meshgrid(ticks, ticks), axis=-1).reshape(-1, 2)
    value, grad, hess = ha.derivatives(net, grid)  # (G,), (G, 2), (G, 2, 2)
    eigvals, eigvecs = np.linalg.eigh(hess)  # ascending principal curvatures and directions
    lap = ha.laplacian(net, grid)
    print(f"\ngrid of {side} x {side} = {grid.shape[0]} points; Hessians {hess.shape}")
    print(f"Laplacian check: max |ha.laplacian - (λ₁ + λ₂)| = {np.max(np.abs(lap - eigvals.sum(axis=1))):.1e}")
    print(f"same from ha.hessian: max |difference| = {np.max(np.abs(ha.hessian(net, grid) - hess)):.1e}")

    f_true, hess_true = target(grid)
    eig_true = np.linalg.eigvalsh(hess_true)
    big, big_true = largest(eigvals), largest(eig_true)
    print("\n                          network      target")
    print(f"RMS value error          {np.sqrt(np.mean((value - f_true) ** 2)):9.3g}")
    rms = np.sqrt(np.mean(hess_true**2))
    print(f"RMS Hessian error        {np.sqrt(np.mean((hess - hess_true) ** 2)):9.3g}   (RMS Hessian entry {rms:.3g})")
    print(f"max |λ| over the grid    {np.max(np.abs(big)):9.3g} {np.max(np.abs(big_true)):11.3g}")
    print(f"share of grid with |λ| > 1   {np.mean(np.abs(big) > 1):6.1%} {np.mean(np.abs(big_true) > 1):11.1%}")
    print(f"correlation of the two |λ| maps: {np.corrcoef(np.abs(big), np.abs(big_true))[0, 1]:.3f}")

    # The gradient's share: a large gradient with small curvature is a slope, not a bend.
    slope = np.linalg.norm(grad, axis=1)
    i = int(np.argmax(np.abs(big)))
    where = f"({grid[i, 0]:.2f}, {grid[i, 1]:.2f})"
    print(f"max |∇f| over the grid {np.max(slope):.3g}; at {where}, where |λ| is largest, |∇f| = {slope[i]:.3g}")

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
    extent = (-1.5, 1.5, -1.5, 1.5)
    panels = [
        (value, "network f(x)", "viridis", None),
        (big_true, "target: eigenvalue of largest |λ|", "RdBu_r", np.max(np.abs(big_true))),
        (big, "network: eigenvalue of largest |λ|", "RdBu_r", np.max(np.abs(big_true))),
        (lap, "network: Laplacian (ha.laplacian)", "RdBu_r", np.max(np.abs(lap))),
    ]
    for ax, (field, title, cmap, vmax) in zip(axes, panels):
        kw = {"vmin": -vmax, "vmax": vmax} if vmax is not None else {}
        im = ax.imshow(field.reshape(side, side), origin="lower", extent=extent, cmap=cmap, **kw)
        fig.colorbar(im, ax=ax, shrink=0.85)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x₁")
    axes[0].set_ylabel("x₂")
    # Direction of strongest bending, on a coarse subgrid where it is strong.
    stride = max(side // 12, 1)
    sub = np.zeros((side, side), dtype=bool)
    sub[::stride, ::stride] = True
    sub = sub.ravel() & (np.abs(big) > 0.2 * np.max(np.abs(big)))
    which = np.argmax(np.abs(eigvals), axis=1)
    direction = eigvecs[np.arange(grid.shape[0]), :, which]
    axes[2].quiver(
        grid[sub, 0],
        grid[sub, 1],
        direction[sub, 0],
        direction[sub, 1],
        pivot="middle",
        headwidth=0,
        headlength=0,
        headaxislength=0,
        scale=18,
        width=0.006,
    )
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out / "sensitivity.png", dpi=75)
    print("\nwrote sensitivity.png")


if __name__ == "__main__":
    main()
