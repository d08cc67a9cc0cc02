"""The Laplacian of a million points on a two-worker local Dask cluster.

A tanh MLP (d = 4, two hidden layers of width 64, one output, float64) held as NumPy arrays;
``x`` a Dask array of 10⁶ points (``--points``) in 8 batch chunks, generated on the workers
and kept there (``persist``) before timing. Timed, each as medians of ``--rounds`` rounds,
results brought back to the client:

- hessarray's Dask path, ``ha.laplacian(model, X).compute()`` (one task per chunk, each
  running the in-memory engine; with one thread per worker and more cores than workers, each
  task uses the engine's thread pool), and the same with every task kept to its own thread
  (``hessarray._dask.SERIAL_TASKS = True`` on the workers);
- the by-hand ``X.map_blocks(lambda b: ha.laplacian(model, b), drop_axis=1).compute()``;
- the in-memory call ``ha.laplacian(model, x)`` on the client (all cores, no cluster).

The Dask variants are timed in turn, round after round. Each worker's peak resident memory
during one more run of each Dask variant (the kernel's high-water mark, reset before it) is
reported next to its time. The cluster is a
``LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1")``.

Run as ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/cluster_bench.py``; it
prints a markdown section and, with ``--write``, replaces the section between the markers in
``docs/benchmarks.md`` (appending it if absent). ``--points 100000`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time

import numpy as np
from doc_section import markers, write_section

import hessarray as ha

BEGIN, END = markers("cluster-bench")


def make_model(rng: np.random.Generator, d: int = 4, width: int = 64) -> ha.Sequential:
    sizes = [d, width, width, 1]
    layers: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(ha.Dense(rng.standard_normal((n_out, n_in)) / np.sqrt(n_in), 0.1 * rng.standard_normal(n_out)))
        if i < len(sizes) - 2:
            layers.append(ha.Tanh())
    return ha.Sequential(*layers, ha.Sum())


# -- on the workers -------------------------------------------------------------------------------
def reset_peak() -> bool:
    """Reset this process's resident-memory high-water mark (Linux ≥ 4.0); ``False`` if not."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    """This process's resident-memory high-water mark (VmHWM, else ru_maxrss), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def set_serial(flag: bool | None) -> None:
    import hessarray._dask

    hessarray._dask.SERIAL_TASKS = flag


# -- timing -----------------------------------------------------------------------------------------
def median_time(fn, rounds: int) -> tuple[float, object]:
    out = fn()  # warm-up: imports, the model's first transfer, compiled kernels
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def round_robin(client, variants: dict, rounds: int) -> dict[str, tuple[float, object, list[float]]]:
    """Median time of each ``(setup, fn)`` variant, timed in turn round after round (no variant
    gains from running first or last), then each one's peak worker memory over one more run."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    outs: dict[str, object] = {}
    for r in range(rounds + 1):  # round 0 warms up
        for name, (setup, fn) in variants.items():
            client.run(set_serial, setup)
            t = time.perf_counter()
            outs[name] = fn()
            if r:
                times[name].append(time.perf_counter() - t)
    found = {}
    for name, (setup, fn) in variants.items():
        client.run(set_serial, setup)
        client.run(reset_peak)
        fn()
        peaks = client.run(peak_mib)
        found[name] = (statistics.median(times[name]), outs[name], [peaks[w] for w in sorted(peaks)])
    client.run(set_serial, None)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000, help="points (default 10⁶)")
    parser.add_argument("--chunks", type=int, default=8, help="batch chunks of x (default 8)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default 5)")
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()

    import dask.array as da
    from distributed import Client, LocalCluster, wait

    rng = np.random.default_rng(0)
    model = make_model(rng)
    n, d = args.points, 4
    chunk = -(-n // args.chunks)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        X = da.random.default_rng(1).standard_normal((n, d), chunks=(chunk, d)).persist()
        wait(X)
        x = X.compute()

        def ours():
            return ha.laplacian(model, X).compute()

        def by_hand():
            return X.map_blocks(lambda b: ha.laplacian(model, b), drop_axis=1, dtype=X.dtype).compute()

        names = {
            "ours": "hessarray Dask path, `ha.laplacian(model, X)`",
            "one": "the same, each task on one thread (`SERIAL_TASKS = True`)",
            "hand": "by hand, `X.map_blocks(lambda b: ha.laplacian(model, b))`",
        }
        found = round_robin(client, {"ours": (None, ours), "one": (True, ours), "hand": (None, by_hand)}, args.rounds)
        rows = [(names[k], found[k][0], found[k][2]) for k in names]
        got, hand = found["ours"][1], found["hand"][1]
        t_mem, want = median_time(lambda: ha.laplacian(model, x), args.rounds)
        diff = max(float(np.max(np.abs(got - want))), float(np.max(np.abs(hand - want)))) / float(np.max(np.abs(want)))

    lines = [BEGIN, "## Dask: the Laplacian on a two-worker local cluster", ""]
    lines.append(
        f"Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/cluster_bench.py"
        f"{'' if n == 1_000_000 else f' --points {n}'} --write`"
    )
    lines.append("")
    lines.append(
        f"Tanh MLP, d={d}, two hidden layers of width 64, float64, NumPy weights; {n:,} points in "
        f"{args.chunks} batch chunks, persisted on a `LocalCluster(n_workers=2, threads_per_worker=1, "
        f"processes=True)` on {os.cpu_count()} cores; results brought back to the client; medians of "
        f"{args.rounds} rounds. Dask results agree with the in-memory call to {diff:.1e} (relative)."
    )
    lines += ["", "| system | median | this / in-memory | peak RSS per worker |", "|---|---|---|---|"]
    for name, seconds, peaks in rows:
        mem = ", ".join(f"{p:.0f} MiB" for p in peaks)
        lines.append(f"| {name} | {seconds * 1e3:.0f} ms | {seconds / t_mem:.2f}× | {mem} |")
    lines.append(f"| in-memory `ha.laplacian(model, x)` on the client (no cluster) | {t_mem * 1e3:.0f} ms | 1.00× | |")
    lines += ["", END]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(text, BEGIN, END)


if __name__ == "__main__":
    main()
