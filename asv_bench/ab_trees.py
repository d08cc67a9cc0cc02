"""Same-run A/B of two source trees of hessarray: which is faster, by how much.

Both trees run in one process, their calls interleaved (A, B, B, A, …), so that the machine's
load falls on both alike; the ratio is the median of the per-pair ratios A / B. Each pair of
trees is run twice, each tree once imported as ``hessarray`` and once as a copy of its package
(``hessarray_b``), since the package imported first can run a percent or two faster; the
ratio reported is the geometric mean of the two runs. For the tanh kernels that issue 13
replaced, from the repository root::

    git worktree add /tmp/tanh-kernels 348db69
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/ab_trees.py /tmp/tanh-kernels

Cases (``--cases``): a tanh MLP (dense d→w, tanh, 3 × (dense w→w, tanh), dense w→1) at the
PINN-like size (d = 2, w = 64, B = 10 000; ``ha.derivatives`` and ``ha.laplacian``), mid
(d = 10, w = 256, B = 2 000), B = 100 and B = 10, and hessQuik's residual network at the
PINN-like size.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: name: (network, d, width, batch, function, pairs of calls per ``--pairs``)
CASES = {
    "pinn": ("mlp", 2, 64, 10_000, "derivatives", 1.0),
    "pinn-laplacian": ("mlp", 2, 64, 10_000, "laplacian", 1.0),
    "mid": ("mlp", 10, 256, 2_000, "derivatives", 0.3),
    "resnet": ("resnet", 2, 64, 10_000, "derivatives", 1.0),
    "b100": ("mlp", 2, 64, 100, "derivatives", 5.0),
    "b10": ("mlp", 2, 64, 10, "derivatives", 20.0),
}


def _call(ha, case: str, dtype: str):
    """The call of ``case`` with package ``ha``: the same weights and input for every tree."""
    import numpy as np

    net, d, w, batch, fn, _ = CASES[case]
    rng = np.random.default_rng(0)

    def dense(n_in, n_out):
        return ha.Dense(
            (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype),
            (rng.standard_normal(n_out) * 0.1).astype(dtype),
        )

    layers = [dense(d, w), ha.Tanh()]
    for _ in range(3):
        layers += [dense(w, w), ha.Tanh()] if net == "mlp" else [ha.Residual(dense(w, w), ha.Tanh(), h=0.5)]
    model = ha.Sequential(*layers, dense(w, 1))
    x = rng.standard_normal((batch, d)).astype(dtype)
    return (lambda: ha.derivatives(model, x)) if fn == "derivatives" else (lambda: ha.laplacian(model, x))


def _worker(args: argparse.Namespace) -> None:
    """One orientation: ``--first`` imported as ``hessarray``, a copy of ``--second``'s package
    as ``hessarray_b``; prints the medians and the median pair ratio first / second as JSON."""
    os.environ["HESSARRAY_THREADS"] = str(args.threads)
    copy = _copy(args.second)
    sys.path[:0] = [args.first, copy]
    first = importlib.import_module("hessarray")  # first: see the module's docstring
    second = importlib.import_module("hessarray_b")

    assert os.path.dirname(first.__file__) == os.path.join(os.path.abspath(args.first), "hessarray"), first.__file__
    calls = [_call(first, args.case, args.dtype), _call(second, args.case, args.dtype)]
    for _ in range(3):  # compile, and warm both
        calls[0]()
        calls[1]()
    times: list[list[float]] = [[], []]
    for i in range(args.pairs):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            calls[which]()
            times[which].append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(*times))
    print(json.dumps({"first": statistics.median(times[0]), "second": statistics.median(times[1]), "ratio": ratio}))


def _copy(tree: str) -> str:
    """A folder holding ``tree``'s package as ``hessarray_b``, made again only when a source file
    changed (so that numba's cache in it is kept between runs)."""
    package = os.path.join(tree, "hessarray")
    stamp = hashlib.sha1()
    for folder, _, files in sorted(os.walk(package)):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            stamp.update(f"{path}:{os.path.getmtime(path)}:{os.path.getsize(path)}".encode())
    copy = os.path.join(tempfile.gettempdir(), f"ab_trees_{stamp.hexdigest()[:16]}")
    if not os.path.isdir(os.path.join(copy, "hessarray_b")):
        shutil.copytree(package, os.path.join(copy, "hessarray_b"), ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _run(first: str, second: str, case: str, dtype: str, threads: int, pairs: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--first", first, "--second", second, "--case", case]
    cmd += ["--dtype", dtype, "--threads", str(threads), "--pairs", str(pairs)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("b", nargs="?", help="the tree to compare with (its root, holding hessarray/)")
    p.add_argument("--a", default=ROOT, help="the tree measured (default: this repository)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=200, help="pairs of calls per run at the PINN-like size")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--first", help=argparse.SUPPRESS)
    p.add_argument("--second", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--dtype", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    if args.b is None:
        p.error("the tree to compare with is required")
    print(f"A = {args.a}, B = {args.b}; {args.threads} thread(s); A / B, above 1: A is slower")
    print("| case | dtype | A | B | A / B | A as package | A as copy |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        pairs = max(10, round(args.pairs * CASES[case][5]))
        for dtype in args.dtypes:
            ab = _run(args.a, args.b, case, dtype, args.threads, pairs)
            ba = _run(args.b, args.a, case, dtype, args.threads, pairs)
            ratio = math.sqrt(ab["ratio"] / ba["ratio"])
            a_ms = math.sqrt(ab["first"] * ba["second"]) * 1e3
            b_ms = math.sqrt(ab["second"] * ba["first"]) * 1e3
            print(
                f"| {case} | {dtype} | {a_ms:.3f} ms | {b_ms:.3f} ms | {ratio:.3f} | {ab['ratio']:.3f} | "
                f"{1 / ba['ratio']:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
