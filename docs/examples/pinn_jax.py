"""Physics-informed network for a 2-D Poisson problem under ``jax.jit``, differentiated by ``jax.grad``
through ``ha.laplacian``.

Solves ``-Δu = f`` on the unit square with ``u = 0`` on its boundary, for
``f = 2π² sin(πx) sin(πy)`` (exact solution ``u = sin(πx) sin(πy)``). The parameters are a
pytree of JAX arrays; the jitted loss builds the hessarray model from them, so ``jax.grad``
traces through hessarray's Laplacian. JAX's own ``jit(grad(trace ∘ hessian))`` step checks the
gradient and sets the time.

Run ``python docs/examples/pinn_jax.py [--small] [--out DIR]``; writes ``pinn_jax.png``.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

import hessarray as ha

jax.config.update("jax_enable_x64", True)

BOUNDARY_WEIGHT = 100.0  # the boundary term's weight against the residual's (f is of size 2π² ≈ 20)
Params = list[tuple[jax.Array, jax.Array]]


def init_params(widths: list[int], rng: np.random.Generator) -> Params:
    """``[(W (out, in), b (out,)), ...]`` of an MLP, Glorot-normal, float64."""
    return [
        (jnp.asarray(rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / (n_in + n_out))), jnp.zeros(n_out))
        for n_in, n_out in zip(widths, widths[1:])
    ]


def model_of(params: Params) -> ha.Sequential:
    """The hessarray model of the (traced) parameters: built inside the jitted function."""
    layers = []
    for k, (W, b) in enumerate(params):
        layers.append(ha.Dense(W, b))
        if k + 1 < len(params):
            layers.append(ha.Tanh())
    return ha.Sequential(*layers, ha.Sum())


def source(x: jax.Array) -> jax.Array:
    return 2 * jnp.pi**2 * jnp.sin(jnp.pi * x[:, 0]) * jnp.sin(jnp.pi * x[:, 1])


def exact(x: jax.Array) -> jax.Array:
    return jnp.sin(jnp.pi * x[:, 0]) * jnp.sin(jnp.pi * x[:, 1])


def sample(n_interior: int, n_boundary: int, rng: np.random.Generator) -> tuple[jax.Array, jax.Array]:
    """Uniform interior points and points spread over the four edges."""
    interior = rng.random((n_interior, 2))
    t = rng.random(n_boundary)
    side = np.arange(n_boundary) % 4
    bx = np.where(side == 0, 0.0, np.where(side == 1, 1.0, t))
    by = np.where(side == 2, 0.0, np.where(side == 3, 1.0, t))
    return jnp.asarray(interior), jnp.asarray(np.stack([bx, by], axis=1))


def loss_hessarray(params: Params, interior: jax.Array, boundary: jax.Array) -> jax.Array:
    """``mean((Δu + f)²) + w·mean(u²)`` on the boundary, the Laplacian from hessarray."""
    model = model_of(params)
    residual = ha.laplacian(model, interior) + source(interior)
    return jnp.mean(residual**2) + BOUNDARY_WEIGHT * jnp.mean(model(boundary) ** 2)


def u_one(params: Params, x: jax.Array) -> jax.Array:
    """The network at one point ``x (2,)``, written out for ``jax.hessian``."""
    h = x
    for k, (W, b) in enumerate(params):
        h = W @ h + b
        if k + 1 < len(params):
            h = jnp.tanh(h)
    return h[0]


def loss_jax(params: Params, interior: jax.Array, boundary: jax.Array) -> jax.Array:
    """The same loss, the Laplacian as ``vmap`` of the trace of ``jax.hessian``."""
    lap = jax.vmap(lambda x: jnp.trace(jax.hessian(u_one, argnums=1)(params, x)))(interior)
    u_b = jax.vmap(lambda x: u_one(params, x))(boundary)
    return jnp.mean((lap + source(interior)) ** 2) + BOUNDARY_WEIGHT * jnp.mean(u_b**2)


step_hessarray = jax.jit(jax.value_and_grad(loss_hessarray))
step_jax = jax.jit(jax.value_and_grad(loss_jax))


def compare_steps(params: Params, interior: jax.Array, boundary: jax.Array, rounds: int) -> dict[str, float]:
    """Gradient agreement and median time per jitted step (compiled first), interleaved."""
    steps = {"hessarray": step_hessarray, "jax": step_jax}
    grads, compile_s = {}, {}
    for name, step in steps.items():
        t = time.perf_counter()
        grads[name] = ravel_pytree(jax.block_until_ready(step(params, interior, boundary))[1])[0]
        compile_s[name] = time.perf_counter() - t
    rel = float(jnp.max(jnp.abs(grads["hessarray"] - grads["jax"])) / jnp.max(jnp.abs(grads["jax"])))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            jax.block_until_ready(step(params, interior, boundary))
            times[name].append(time.perf_counter() - t)
    out = {"rel": rel, **{name: statistics.median(ts) for name, ts in times.items()}}
    return out | {f"compile {name}": s for name, s in compile_s.items()}


@jax.jit
def adam_update(params: Params, grad: Params, state: tuple, lr: jax.Array) -> tuple[Params, tuple]:
    """One Adam step from the gradient; ``state`` holds the two moments and the step count."""
    m, v, k = state
    k = k + 1
    m = jax.tree.map(lambda a, g: 0.9 * a + 0.1 * g, m, grad)
    v = jax.tree.map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grad)
    scale = lr * jnp.sqrt(1 - 0.999**k) / (1 - 0.9**k)
    params = jax.tree.map(lambda p, a, b: p - scale * a / (jnp.sqrt(b) + 1e-8), params, m, v)
    return params, (m, v, k)


def train(params: Params, interior, boundary, adam_steps: int, lbfgs_steps: int) -> tuple[Params, list[float]]:
    """Adam with a decaying step, then SciPy's L-BFGS on the jitted loss and gradient."""
    from scipy.optimize import minimize

    history = []
    zeros = jax.tree.map(jnp.zeros_like, params)
    state = (zeros, zeros, jnp.zeros((), dtype=jnp.int64))
    for i in range(adam_steps):
        lr = 2e-3 * 0.1 ** (i / max(adam_steps, 1))
        loss, grad = step_hessarray(params, interior, boundary)
        params, state = adam_update(params, grad, state, lr)
        history.append(float(loss))
    flat0, unravel = ravel_pytree(params)

    def fun(w: np.ndarray) -> tuple[float, np.ndarray]:
        loss, grad = step_hessarray(unravel(jnp.asarray(w)), interior, boundary)
        history.append(float(loss))
        return float(loss), np.asarray(ravel_pytree(grad)[0])

    if lbfgs_steps:
        res = minimize(fun, np.asarray(flat0), jac=True, method="L-BFGS-B", options={"maxiter": lbfgs_steps})
        params = unravel(jnp.asarray(res.x))
    return params, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a quick run (CI)")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n_int, n_bd, adam_steps, lbfgs_steps, bench_batch, rounds = (
        (256, 64, 100, 40, 256, 3) if args.small else (1024, 256, 1500, 500, 4096, 7)
    )
    widths = [2, 64, 64, 64, 1]
    params = init_params(widths, rng)
    interior, boundary = sample(n_int, n_bd, rng)

    print(f"PINN for -Δu = f on [0,1]², u = 0 on the boundary; network {widths}, tanh, float64, jax.jit")
    # --small times the training points themselves: one compilation of the step, not two.
    b_int, b_bd = (interior, boundary) if args.small else sample(bench_batch, bench_batch // 8, rng)
    cmp = compare_steps(params, b_int, b_bd, rounds)
    n_weights = ravel_pytree(params)[0].size
    print(f"\ntraining step (jit(value_and_grad(loss)) of all {n_weights} weights), batch {bench_batch}:")
    print(f"  gradients, hessarray against jax.hessian: max relative difference {cmp['rel']:.1e}")
    print(f"  hessarray ha.laplacian under jax.grad  : {cmp['hessarray'] * 1e3:8.1f} ms per step")
    print(f"  JAX vmap(trace(hessian))               : {cmp['jax'] * 1e3:8.1f} ms per step")
    print(f"  ratio JAX / hessarray                  : {cmp['jax'] / cmp['hessarray']:.2f}x")
    compiled = f"hessarray {cmp['compile hessarray']:.1f} s, JAX {cmp['compile jax']:.1f} s"
    print(f"  (first call, tracing and compiling: {compiled})")

    t = time.perf_counter()
    params, history = train(params, interior, boundary, adam_steps, lbfgs_steps)
    elapsed = time.perf_counter() - t
    print(f"\ntraining: {adam_steps} Adam steps + up to {lbfgs_steps} L-BFGS iterations on {n_int} interior")
    print(f"  and {n_bd} boundary points, {elapsed:.1f} s; final loss {history[-1]:.3e}")

    grid = jnp.linspace(0, 1, 101)
    gx, gy = jnp.meshgrid(grid, grid, indexing="xy")
    points = jnp.stack([gx.reshape(-1), gy.reshape(-1)], axis=1)
    u = model_of(params)(points)
    err = u - exact(points)
    rel_l2 = float(jnp.linalg.norm(err) / jnp.linalg.norm(exact(points)))
    print(f"  relative L2 error against sin(πx)·sin(πy) on a 101×101 grid: {rel_l2:.2e}")
    print(f"  max |u - u_exact|: {float(jnp.max(jnp.abs(err))):.2e}")
    plot(
        args.out / "pinn_jax.png",
        np.asarray(u).reshape(101, 101),
        np.asarray(err).reshape(101, 101),
        history,
        adam_steps,
    )


def plot(path: pathlib.Path, u: np.ndarray, err: np.ndarray, history: list[float], adam_steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3))
    extent = (0, 1, 0, 1)
    im = axes[0].imshow(u, origin="lower", extent=extent, cmap="viridis")
    axes[0].set_title("network u(x, y)")
    fig.colorbar(im, ax=axes[0])
    im = axes[1].imshow(err, origin="lower", extent=extent, cmap="RdBu_r")
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
