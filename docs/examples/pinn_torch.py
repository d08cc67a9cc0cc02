"""Physics-informed network for a 2-D Poisson problem, trained with PyTorch through ``ha.laplacian``.

Solves ``-Δu = f`` on the unit square with ``u = 0`` on its boundary, for
``f = 2π² sin(πx) sin(πy)`` (exact solution ``u = sin(πx) sin(πy)``). The network's weights are
torch tensors with ``requires_grad``; the loss takes the Laplacian from hessarray and torch
autograd differentiates it with respect to every weight. The same training step through
``torch.func`` (``vmap`` of the trace of ``hessian``) checks the gradient and sets the time.

Run ``python docs/examples/pinn_torch.py [--small] [--out DIR]``; writes ``pinn_torch.png``.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import statistics
import time

import torch
from torch.func import hessian, vmap

import hessarray as ha

DTYPE = torch.float64
BOUNDARY_WEIGHT = 100.0  # the boundary term's weight against the residual's (f is of size 2π² ≈ 20)


def init_params(widths: list[int], gen: torch.Generator) -> list[torch.Tensor]:
    """Weights ``W (out, in)`` and biases ``b (out,)`` of an MLP, Glorot-normal, as leaf tensors."""
    params = []
    for n_in, n_out in zip(widths, widths[1:]):
        W = torch.randn(n_out, n_in, generator=gen, dtype=DTYPE) * math.sqrt(2.0 / (n_in + n_out))
        params += [W.requires_grad_(), torch.zeros(n_out, dtype=DTYPE, requires_grad=True)]
    return params


def model_of(params: list[torch.Tensor]) -> ha.Sequential:
    """The hessarray model holding the torch tensors themselves (no copy): autograd sees through it."""
    layers = []
    for k in range(0, len(params), 2):
        layers.append(ha.Dense(params[k], params[k + 1]))
        if k + 2 < len(params):
            layers.append(ha.Tanh())
    return ha.Sequential(*layers, ha.Sum())


def source(x: torch.Tensor) -> torch.Tensor:
    return 2 * math.pi**2 * torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])


def exact(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(math.pi * x[:, 0]) * torch.sin(math.pi * x[:, 1])


def sample(n_interior: int, n_boundary: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform interior points and points spread over the four edges."""
    interior = torch.rand(n_interior, 2, generator=gen, dtype=DTYPE)
    t = torch.rand(n_boundary, generator=gen, dtype=DTYPE)
    side = torch.arange(n_boundary) % 4
    zeros, ones = torch.zeros_like(t), torch.ones_like(t)
    bx = torch.where(side == 0, zeros, torch.where(side == 1, ones, t))
    by = torch.where(side == 2, zeros, torch.where(side == 3, ones, t))
    return interior, torch.stack([bx, by], dim=1)


def loss_hessarray(params: list[torch.Tensor], interior: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """``mean((Δu + f)²) + w·mean(u²)`` on the boundary, the Laplacian from hessarray."""
    model = model_of(params)
    residual = ha.laplacian(model, interior) + source(interior)
    return torch.mean(residual**2) + BOUNDARY_WEIGHT * torch.mean(model(boundary) ** 2)


def u_one(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The network at one point ``x (2,)``, written out for ``torch.func``."""
    h = x
    for k in range(0, len(params), 2):
        h = params[k] @ h + params[k + 1]
        if k + 2 < len(params):
            h = torch.tanh(h)
    return h[0]


def loss_torch_func(params: list[torch.Tensor], interior: torch.Tensor, boundary: torch.Tensor) -> torch.Tensor:
    """The same loss, the Laplacian as ``vmap`` of the trace of ``torch.func.hessian``."""
    lap = vmap(lambda x: torch.trace(hessian(u_one, argnums=1)(params, x)))(interior)
    u_b = vmap(lambda x: u_one(params, x))(boundary)
    return torch.mean((lap + source(interior)) ** 2) + BOUNDARY_WEIGHT * torch.mean(u_b**2)


def step_gradient(loss_fn, params, interior, boundary) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training step's work: the loss and its gradient with respect to every parameter."""
    loss = loss_fn(params, interior, boundary)
    return loss, list(torch.autograd.grad(loss, params))


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def compare_steps(params, interior, boundary, rounds: int) -> dict[str, float]:
    """Gradient agreement and median time per step, hessarray and torch.func interleaved."""
    _, g_ha = step_gradient(loss_hessarray, params, interior, boundary)
    _, g_tf = step_gradient(loss_torch_func, params, interior, boundary)
    a, b = flat(g_ha), flat(g_tf)
    rel = float(torch.max(torch.abs(a - b)) / torch.max(torch.abs(b)))
    times: dict[str, list[float]] = {"hessarray": [], "torch.func": []}
    for _ in range(rounds):
        for name, fn in (("hessarray", loss_hessarray), ("torch.func", loss_torch_func)):
            t = time.perf_counter()
            step_gradient(fn, params, interior, boundary)
            times[name].append(time.perf_counter() - t)
    return {"rel": rel, **{name: statistics.median(ts) for name, ts in times.items()}}


def train(params, interior, boundary, adam_steps: int, lbfgs_steps: int) -> list[float]:
    """Adam with a decaying step, then L-BFGS; returns the loss of every evaluation."""
    history = []
    adam = torch.optim.Adam(params, lr=2e-3)
    decay = torch.optim.lr_scheduler.ExponentialLR(adam, gamma=0.1 ** (1 / max(adam_steps, 1)))
    for _ in range(adam_steps):
        adam.zero_grad()
        loss = loss_hessarray(params, interior, boundary)
        loss.backward()
        adam.step()
        decay.step()
        history.append(loss.item())
    lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=20, history_size=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        lbfgs.zero_grad()
        loss = loss_hessarray(params, interior, boundary)
        loss.backward()
        history.append(loss.item())
        return loss

    for _ in range(lbfgs_steps // 20):
        lbfgs.step(closure)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (CI)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 with --small)")
    args = parser.parse_args()
    # CI machines are small and shared, where torch's spinning thread pool only slows a small run down.
    threads = args.threads or (1 if args.small else None)
    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    n_int, n_bd, adam_steps, lbfgs_steps, bench_batch, rounds = (
        (256, 64, 100, 40, 512, 3) if args.small else (1024, 256, 1500, 500, 4096, 7)
    )
    widths = [2, 64, 64, 64, 1]
    params = init_params(widths, gen)
    interior, boundary = sample(n_int, n_bd, gen)

    print(f"PINN for -Δu = f on [0,1]², u = 0 on the boundary; network {widths}, tanh, float64")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    b_int, b_bd = sample(bench_batch, bench_batch // 8, gen)
    cmp = compare_steps(params, b_int, b_bd, rounds)
    print(f"\ntraining step (loss + gradient of all {sum(p.numel() for p in params)} weights), batch {bench_batch}:")
    print(f"  gradients, hessarray against torch.func: max relative difference {cmp['rel']:.1e}")
    print(f"  hessarray ha.laplacian + autograd : {cmp['hessarray'] * 1e3:8.1f} ms per step")
    print(f"  torch.func vmap(trace(hessian))   : {cmp['torch.func'] * 1e3:8.1f} ms per step")
    print(f"  ratio torch.func / hessarray      : {cmp['torch.func'] / cmp['hessarray']:.2f}x")

    t = time.perf_counter()
    history = train(params, interior, boundary, adam_steps, lbfgs_steps)
    elapsed = time.perf_counter() - t
    print(f"\ntraining: {adam_steps} Adam steps + up to {lbfgs_steps} L-BFGS iterations on {n_int} interior")
    print(f"  and {n_bd} boundary points, {elapsed:.1f} s; final loss {history[-1]:.3e}")

    grid = torch.linspace(0, 1, 101, dtype=DTYPE)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    with torch.no_grad():
        u = model_of(params)(points)
    err = u - exact(points)
    rel_l2 = float(torch.linalg.vector_norm(err) / torch.linalg.vector_norm(exact(points)))
    print(f"  relative L2 error against sin(πx)·sin(πy) on a 101×101 grid: {rel_l2:.2e}")
    print(f"  max |u - u_exact|: {float(torch.max(torch.abs(err))):.2e}")
    plot(args.out / "pinn_torch.png", u.reshape(101, 101), err.reshape(101, 101), history, adam_steps)


def plot(path: pathlib.Path, u: torch.Tensor, err: torch.Tensor, history: list[float], adam_steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    extent = (0, 1, 0, 1)
    im = axes[0].imshow(u.numpy(), origin="lower", extent=extent, cmap="viridis")
    axes[0].set_title("network u(x, y)")
    fig.colorbar(im, ax=axes[0])
    im = axes[1].imshow(err.numpy(), origin="lower", extent=extent, cmap="RdBu_r")
    axes[1].set_title("u - sin(πx) sin(πy)")
    fig.colorbar(im, ax=axes[1])
    axes[2].semilogy(range(1, len(history) + 1), history)
    axes[2].axvline(adam_steps, color="grey", lw=0.8, ls="--")
    axes[2].set_title("loss: Adam, then L-BFGS")
    axes[2].set_xlabel("loss evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
