"""The PINN training step through hessarray's Laplacian, on PyTorch and on JAX, against their own autodiff.

One step is the loss ``mean((Δu + f)²) + mean(u_b²)`` (interior points and one boundary point per
eight) and its gradient with respect to every parameter of a tanh MLP (d = 2, three hidden layers
of width 64, float64 and float32, batch 4 096 and 16 384, CPU):

* PyTorch: ``ha.laplacian`` on a model holding the ``requires_grad`` tensors, then
  ``torch.autograd.grad``; against ``torch.func`` (``vmap`` of the trace of ``hessian``).
* JAX: ``jit(value_and_grad(loss))`` with the hessarray model built from the parameter pytree
  inside the loss; against ``jit(value_and_grad)`` of ``vmap`` of the trace of ``jax.hessian``,
  and of folx's ``forward_laplacian`` where folx is installed.

Times are medians over rounds in which every system runs once (same process, interleaved), after
one warm-up (and compilation) call each; gradients are checked against each other.

Run as ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/training_bench.py``; it prints
a markdown section and, with ``--write``, replaces the section between the markers in
``docs/benchmarks.md``. ``--quick`` is a smoke run (small batch, two rounds).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
from doc_section import markers, write_section

import hessarray as ha

BEGIN, END = markers("training-bench")
#: XLA's CPU flag that turns its YNNPACK fusions off (``--no-ynn``): on XLA's CPU backend they join
#: the tangents' matrix products and the elementwise work around them into one fusion.
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
D, WIDTH, HIDDEN = 2, 64, 3
#: (torch.func / hessarray on torch, JAX / hessarray on JAX, folx / hessarray on JAX): at least these.
TARGETS = {"torch": 1.5, "jax": 1.3, "folx": 1.0}


def weights(rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    sizes = [D] + [WIDTH] * HIDDEN + [1]
    return [
        (rng.standard_normal((o, i)) * math.sqrt(2 / (i + o)), 0.1 * rng.standard_normal(o))
        for i, o in zip(sizes, sizes[1:])
    ]


def points(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interior points, their source term ``f`` and boundary points (``batch // 8``, on the edges)."""
    x = rng.random((batch, D))
    f = 2 * math.pi**2 * np.sin(math.pi * x[:, 0]) * np.sin(math.pi * x[:, 1])
    xb = rng.random((batch // 8, D))
    xb[::2, 0] = np.round(xb[::2, 0])
    xb[1::2, 1] = np.round(xb[1::2, 1])
    return x, f, xb


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, one call of each per round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def torch_case(params_np, data, dtype_name: str, rounds: int) -> dict:
    import torch
    from torch.func import hessian, vmap

    dtype = getattr(torch, dtype_name)
    params = [torch.tensor(a, dtype=dtype, requires_grad=True) for pair in params_np for a in pair]
    x, f, xb = (torch.tensor(a, dtype=dtype) for a in data)

    def loss_ha() -> torch.Tensor:
        layers = []
        for k in range(0, len(params), 2):
            layers += [ha.Dense(params[k], params[k + 1])] + ([ha.Tanh()] if k + 2 < len(params) else [])
        model = ha.Sequential(*layers, ha.Sum())
        return torch.mean((ha.laplacian(model, x) + f) ** 2) + torch.mean(model(xb) ** 2)

    def u_one(ps, xi):
        for k in range(0, len(ps), 2):
            xi = ps[k] @ xi + ps[k + 1]
            if k + 2 < len(ps):
                xi = torch.tanh(xi)
        return xi[0]

    def loss_tf() -> torch.Tensor:
        lap = vmap(lambda xi: torch.trace(hessian(u_one, argnums=1)(params, xi)))(x)
        return torch.mean((lap + f) ** 2) + torch.mean(vmap(lambda xi: u_one(params, xi))(xb) ** 2)

    def step(loss_fn):
        return lambda: torch.autograd.grad(loss_fn(), params)

    systems = {"hessarray (torch)": step(loss_ha), "torch.func vmap(trace(hessian))": step(loss_tf)}
    grads = {name: np.concatenate([g.detach().numpy().ravel() for g in fn()]) for name, fn in systems.items()}
    ref = grads["torch.func vmap(trace(hessian))"]
    return {"times": interleaved(systems, rounds), "diff": rel_diff(grads["hessarray (torch)"], ref)}


def jax_case(params_np, data, dtype_name: str, rounds: int) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    jax.config.update("jax_enable_x64", True)
    dtype = getattr(jnp, dtype_name)
    params = [(jnp.asarray(W, dtype=dtype), jnp.asarray(b, dtype=dtype)) for W, b in params_np]
    x, f, xb = (jnp.asarray(a, dtype=dtype) for a in data)

    def u_one(ps, xi):
        for k, (W, b) in enumerate(ps):
            xi = W @ xi + b
            if k + 1 < len(ps):
                xi = jnp.tanh(xi)
        return xi[0]

    def boundary(ps):
        return jnp.mean(jax.vmap(lambda xi: u_one(ps, xi))(xb) ** 2)

    def loss_ha(ps, x, f, xb):
        layers = []
        for k, (W, b) in enumerate(ps):
            layers += [ha.Dense(W, b)] + ([ha.Tanh()] if k + 1 < len(ps) else [])
        model = ha.Sequential(*layers, ha.Sum())
        return jnp.mean((ha.laplacian(model, x) + f) ** 2) + jnp.mean(model(xb) ** 2)

    def loss_jax(ps, x, f, xb):
        lap = jax.vmap(lambda xi: jnp.trace(jax.hessian(u_one, argnums=1)(ps, xi)))(x)
        return jnp.mean((lap + f) ** 2) + boundary(ps)

    losses = {"hessarray (JAX, jit)": loss_ha, "JAX jit(grad(trace(hessian)))": loss_jax}
    try:
        from folx import forward_laplacian

        def loss_folx(ps, x, f, xb):
            lap = jax.vmap(lambda xi: forward_laplacian(lambda z: u_one(ps, z))(xi).laplacian)(x)
            return jnp.mean((lap + f) ** 2) + boundary(ps)

        losses["folx forward_laplacian, jit(grad)"] = loss_folx
    except ImportError:
        pass
    steps = {name: jax.jit(jax.value_and_grad(fn)) for name, fn in losses.items()}
    systems = {name: (lambda s=s: jax.block_until_ready(s(params, x, f, xb))) for name, s in steps.items()}
    grads, compile_s = {}, {}
    for name, fn in systems.items():
        t = time.perf_counter()
        grads[name] = np.asarray(ravel_pytree(fn()[1])[0])
        compile_s[name] = time.perf_counter() - t
    ref = grads["JAX jit(grad(trace(hessian)))"]
    diffs = {name: rel_diff(g, ref) for name, g in grads.items()}
    return {"times": interleaved(systems, rounds), "diffs": diffs, "compile": compile_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 512, float64, two rounds")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--torch-threads", type=int, default=None, help="torch's intra-op threads (default: its own)")
    parser.add_argument(
        "--no-ynn",
        action="store_true",
        help=f"every JAX system without XLA's YNNPACK CPU fusions (XLA_FLAGS={NO_YNN}); writes its own section",
    )
    args = parser.parse_args()
    begin, end = (BEGIN, END)
    if args.no_ynn:  # before JAX starts its backend, for every JAX system of the run alike
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + NO_YNN).strip()
        begin, end = markers("training-bench-no-ynn")
    rounds = 2 if args.quick else args.rounds
    cases = [(512, "float64")] if args.quick else [(b, t) for b in (4096, 16384) for t in ("float64", "float32")]
    rng = np.random.default_rng(0)
    params_np = weights(rng)
    import jax
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    title = "## PINN training step through the Laplacian (PyTorch autograd and jax.grad)"
    if args.no_ynn:
        title += ", XLA's YNNPACK fusions off"
    lines = [begin, title, ""]
    flags = f" --torch-threads {args.torch_threads}" if args.torch_threads else ""
    flags += " --no-ynn" if args.no_ynn else ""
    lines += [
        f"Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/training_bench.py{flags} --write`",
        "",
        f"One step: `mean((Δu + f)²) + mean(u_b²)` and its gradient with respect to all weights of a tanh MLP "
        f"(d={D}, {HIDDEN} hidden layers of width {WIDTH}, one boundary point per eight interior ones), "
        f"on {platform.processor() or platform.machine()} CPU, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), jax {jax.__version__}. Medians of {rounds} interleaved rounds "
        "after a warm-up (compiling) call; ratios are this system's time over hessarray's on the same framework.",
        "",
    ]
    verdicts = []
    for batch, dtype in cases:
        data = points(rng, batch)
        tc = torch_case(params_np, data, dtype, rounds)
        jc = jax_case(params_np, data, dtype, rounds)
        lines += [
            f"### batch {batch}, {dtype}",
            "",
            "| system | median per step | this / hessarray | gradient rel. diff |",
        ]
        lines.append("|---|---|---|---|")
        t_ha = tc["times"]["hessarray (torch)"]
        for name, t in tc["times"].items():
            diff = f"{tc['diff']:.1e}" if name.startswith("hessarray") else "reference"
            lines.append(f"| {name} | {t * 1e3:.1f} ms | {t / t_ha:.2f}× | {diff} |")
        j_ha = jc["times"]["hessarray (JAX, jit)"]
        for name, t in jc["times"].items():
            diff = "reference" if name.startswith("JAX") else f"{jc['diffs'][name]:.1e}"
            lines.append(f"| {name} | {t * 1e3:.1f} ms | {t / j_ha:.2f}× | {diff} |")
        compile_s = ", ".join(f"{name.split(' ')[0]} {s:.1f} s" for name, s in jc["compile"].items())
        lines += ["", f"First JAX call (trace and compile): {compile_s}.", ""]
        tag = f"batch {batch}, {dtype}"
        peer = tc["times"]["torch.func vmap(trace(hessian))"]
        verdicts.append((f"hessarray on torch against torch.func, {tag}", TARGETS["torch"], peer / t_ha))
        peer = jc["times"]["JAX jit(grad(trace(hessian)))"]
        verdicts.append((f"hessarray on JAX against JAX's own, {tag}", TARGETS["jax"], peer / j_ha))
        if "folx forward_laplacian, jit(grad)" in jc["times"]:
            peer = jc["times"]["folx forward_laplacian, jit(grad)"]
            verdicts.append((f"hessarray on JAX against folx, {tag}", TARGETS["folx"], peer / j_ha))
        print(f"done: batch {batch}, {dtype}", flush=True)
    if not any("folx" in v[0] for v in verdicts):
        lines += ["folx is not installed here (`pip install folx`): its line is left out.", ""]
    lines += ["### Targets (same run)", "", "| target | ratio | met |", "|---|---|---|"]
    for label, want, ratio in verdicts:
        lines.append(f"| {label}: ≥ {want:.1f}× | {ratio:.2f}× | {'met' if ratio >= want else 'missed'} |")
    lines += ["", end]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text, begin, end)


if __name__ == "__main__":
    main()
