"""The two performance lines of the curvature functions, measured side by side in one process.

1. Laplacian of a tanh MLP (d = 50, width 128, depth 4, batch 2 000, float64, CPU):
   ``ha.laplacian`` on NumPy against ``jax.jit(vmap(lambda x: trace(jax.hessian(f)(x))))``,
   folx's forward Laplacian under ``jax.jit`` (if installed), and hessarray's own full Hessian
   followed by a trace; plus the peak of NumPy allocations (tracemalloc) against the size of
   one ``(batch, d, d)`` array.
2. Layer-block parameter Hessian of an MLP (d = 8, three tanh layers of width 32, MSE loss,
   batch 1 000, float64): ``ha.parameter_hessian(blocks="layer")`` against
   ``jax.jit(jax.hessian(loss, argnums=...))`` one weight or bias at a time.

Run as ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/curvature_bench.py``;
it prints a markdown section and, with ``--write``, replaces the section between the markers
in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc

import numpy as np
from doc_section import markers, write_section

import hessarray as ha

BEGIN, END = markers("curvature-bench")


def median_time(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def mlp(rng, d, width, depth, out=1):
    sizes = [d] + [width] * depth + [out]
    return [(rng.standard_normal((o, i)) / np.sqrt(i), 0.1 * rng.standard_normal(o)) for i, o in zip(sizes, sizes[1:])]


def laplacian_case(lines: list[str]) -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    d, width, depth, batch = 50, 128, 4, 2000
    params = mlp(rng, d, width, depth)
    x = rng.standard_normal((batch, d))
    layers = []
    for i, (W, b) in enumerate(params):
        layers.append(ha.Dense(W, b))
        if i < len(params) - 1:
            layers.append(ha.Tanh())
    model = ha.Sequential(*layers, ha.Sum())
    jparams = [(jnp.asarray(W), jnp.asarray(b)) for W, b in params]

    def f(xi):
        for i, (W, b) in enumerate(jparams):
            xi = W @ xi + b
            if i < len(jparams) - 1:
                xi = jnp.tanh(xi)
        return xi[0]

    xj = jnp.asarray(x)
    jax_lap = jax.jit(jax.vmap(lambda xi: jnp.trace(jax.hessian(f)(xi))))
    ref = np.asarray(jax_lap(xj))
    ours = ha.laplacian(model, x)
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    rows = [("hessarray laplacian (NumPy)", median_time(lambda: ha.laplacian(model, x)))]
    rows.append(
        ("hessarray hessian + trace (NumPy)", median_time(lambda: np.trace(ha.hessian(model, x), axis1=1, axis2=2)))
    )
    rows.append(("JAX jit(vmap(trace(hessian)))", median_time(lambda: jax_lap(xj).block_until_ready())))
    try:
        from folx import forward_laplacian

        folx_lap = jax.jit(jax.vmap(lambda xi: forward_laplacian(f)(xi).laplacian))
        ferr = float(np.max(np.abs(np.asarray(folx_lap(xj)) - ref)) / np.max(np.abs(ref)))
        rows.append(
            (
                f"folx forward_laplacian, jit (rel. diff {ferr:.1e})",
                median_time(lambda: folx_lap(xj).block_until_ready()),
            )
        )
    except ImportError:
        rows.append(("folx forward_laplacian", float("nan")))
    tracemalloc.start()
    ha.laplacian(model, x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    full = batch * d * d * 8
    ours_t = rows[0][1]
    lines += [
        f"### Laplacian: tanh MLP, d={d}, width {width}, depth {depth}, batch {batch}, float64",
        "",
        f"hessarray against JAX: max relative difference {err:.1e}.",
        "",
        "| system | median | this / hessarray laplacian |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t * 1e3:.1f} ms | {t / ours_t:.2f}× |" for name, t in rows]
    lines += [
        "",
        f"Peak NumPy allocation during `ha.laplacian`: {peak / 2**20:.1f} MiB; one (batch, d, d) "
        f"float64 array would be {full / 2**20:.1f} MiB (none is made: each layer adds "
        f"``Σ_r c Σ_i L R`` of its factor triples).",
        "",
    ]


def param_block_case(lines: list[str]) -> None:
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(1)
    d, width, batch, m = 8, 32, 1000, 4
    params = mlp(rng, d, width, 3, out=m)
    x = rng.standard_normal((batch, d))
    target = rng.standard_normal((batch, m))
    layers = []
    for i, (W, b) in enumerate(params):
        layers.append(ha.Dense(W, b))
        if i < len(params) - 1:
            layers.append(ha.Tanh())
    model = ha.Sequential(*layers, ha.MSELoss(target))
    flat = [jnp.asarray(a) for W, b in params for a in (W, b)]
    xj, tj = jnp.asarray(x), jnp.asarray(target)

    def loss(*ps):
        h = xj
        for i in range(0, len(ps), 2):
            h = h @ ps[i].T + ps[i + 1]
            if i + 2 < len(ps):
                h = jnp.tanh(h)
        return jnp.sum(jnp.mean((h - tj) ** 2, axis=1))

    per_param = [jax.jit(jax.hessian(loss, argnums=k)) for k in range(len(flat))]

    def jax_blocks():
        return [h(*flat).block_until_ready() for h in per_param]

    ref = jax_blocks()
    ours = ha.parameter_hessian(model, x)
    names = list(model.parameters())
    err = max(
        float(np.max(np.abs(np.asarray(ours[n, n]) - np.asarray(r))) / max(np.max(np.abs(np.asarray(r))), 1e-300))
        for n, r in zip(names, ref)
    )
    t_ours = median_time(lambda: ha.parameter_hessian(model, x))
    t_jax = median_time(jax_blocks, repeats=3)
    lines += [
        f"### Layer-block parameter Hessian: d={d}, three tanh layers of width {width}, MSE loss, batch {batch}",
        "",
        f"Diagonal blocks agree with JAX to {err:.1e} (relative); hessarray also returns the "
        "weight-bias cross blocks of each layer.",
        "",
        "| system | median | this / hessarray |",
        "|---|---|---|",
        f"| hessarray parameter_hessian(blocks='layer') (NumPy) | {t_ours * 1e3:.1f} ms | 1.00× |",
        f"| JAX jit(hessian(loss, argnums=k)), one parameter at a time | {t_jax * 1e3:.1f} ms "
        f"| {t_jax / t_ours:.1f}× |",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    lines = [BEGIN, "## Curvature beyond the input Hessian", ""]
    lines.append("Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/curvature_bench.py --write`")
    lines.append("")
    laplacian_case(lines)
    param_block_case(lines)
    lines.append(END)
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text, BEGIN, END)


if __name__ == "__main__":
    main()
