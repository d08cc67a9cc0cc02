"""The Python side of ``asv_bench/gpu_check.sh``: GPU detection, the asv GPU benchmarks timed
without asv, hessarray against JAX and torch.func on the GPU, and the report.

Run from the repository root (``gpu_check.sh`` does; it needs nothing installed beyond what
the tests need, and installs nothing)::

    python asv_bench/gpu_compare.py detect  --work DIR   # versions and GPUs; exit 3 without a GPU
    python asv_bench/gpu_compare.py asv     --work DIR   # the asv GPU benchmarks, timed here
    python asv_bench/gpu_compare.py compare --work DIR   # hessarray vs JAX jit / torch.func
    python asv_bench/gpu_compare.py report  --work DIR   # DIR's tables into docs/benchmarks.md
    python asv_bench/gpu_compare.py --cpu-smoke          # all of it on the CPU, tiny sizes

Each part writes its fragment (``versions.md``, ``asv.md``, ``compare.md`` and
``compare.json``) into ``DIR``, rewritten after every row, so that a part stopped at its time
limit still leaves what it measured; ``report`` joins the fragments (and the test log
``tests.log`` that ``gpu_check.sh`` writes) into the section of ``docs/benchmarks.md`` between
``<!-- gpu-bench:begin -->`` and ``<!-- gpu-bench:end -->``. Run ``report`` again on this
machine with ``--work`` pointing to the fragments copied back from the GPU machine to put the
results into the checkout.

The comparison: value, gradient and Hessian of every sample of a tanh MLP (depth 4) at the
PINN-like setting (d=2, width 64, batch 10⁴ and 10⁶) and the mid setting (d=10, width 256,
batch 2000), and the Laplacian of a d=50, width-128 MLP over a large batch, in float32 and
float64. hessarray runs on CuPy, on torch CUDA and on JAX (``jax.jit``, the weights passed
as arguments); the peers are JAX ``jit(vmap(hessian))`` (with ``vmap(value_and_grad)``; for
the Laplacian ``vmap(trace(hessian))``) and torch.func ``vmap(hessian)`` (with
``vmap(grad_and_value)``). Every result's first rows are checked against hessarray on NumPy in
float64. Timed calls end in a device synchronisation (``cupy.cuda.Device().synchronize()``,
``torch.cuda.synchronize()``, ``block_until_ready``); medians are reported. The cuBLAS GEMM rate
is measured in the same run (an ``n × n`` matrix product in each dtype, without TF32) and
hessarray's achieved FLOP rate at batch 10⁶ (``2 · ha.plan(...).flops[mode] · batch`` per call)
is set against it.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import itertools
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOCS = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- gpu-bench:begin -->", "<!-- gpu-bench:end -->"
#: Exit status of ``detect`` when no GPU is usable by any of CuPy, torch and JAX.
NO_GPU = 3
#: The backends of the asv suite that run on a GPU (as in ``benchmarks/common.py``).
ASV_GPU_BACKENDS = ["cupy", "torch:cuda", "jax:cuda"]
ASV_CPU_SMOKE_BACKENDS = ["numpy", "torch", "jax"]
#: Rows of each result compared with the NumPy float64 reference.
CHECK_ROWS = 256
TOLERANCE = {"float32": 2e-2, "float64": 1e-8}  # float32: JAX's default matmul precision is TF32


def log(*args: Any) -> None:
    print("[gpu_compare]", *args, flush=True)


# --------------------------------------------------------------------------------------------
# Detection and versions
# --------------------------------------------------------------------------------------------


def cupy_gpu() -> str | None:
    """``None`` when CuPy can use a GPU, else why not. Without a driver or device,
    ``cupy.cuda.runtime.getDeviceCount()`` raises ``CUDARuntimeError``: no GPU."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device"
        cupy.zeros(1)
        return None
    except ImportError:
        return "cupy is not installed"
    except Exception as exc:  # CUDARuntimeError and the like
        return f"{type(exc).__name__}: {exc}"[:160]


def torch_gpu() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    try:
        if not torch.cuda.is_available():
            return f"torch.cuda.is_available() is False (torch {torch.__version__})"
        torch.zeros(1, device="cuda")
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:160]


def jax_gpu() -> str | None:
    try:
        import jax
    except ImportError:
        return "jax is not installed"
    try:
        jax.devices("gpu")
        return None
    except Exception as exc:  # RuntimeError: no GPU backend / no device
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


def gpu_status() -> dict[str, str | None]:
    """For each GPU library, ``None`` when it has a usable GPU here, else the reason."""
    return {"cupy": cupy_gpu(), "torch:cuda": torch_gpu(), "jax:cuda": jax_gpu()}


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions(status: dict[str, str | None]) -> dict[str, str]:
    """Versions of Python, the array libraries and CUDA, and the GPU's name."""
    out = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
    for dist in ("numpy", "array-api-compat", "scipy", "numba"):
        out[dist] = _version(dist)
    try:
        import hessarray

        out["hessarray"] = hessarray.__version__
    except Exception as exc:
        out["hessarray"] = f"does not import: {type(exc).__name__}: {exc}"[:200]
    cupy_dist = next(
        (d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy") if _version(d)[0].isdigit()), ""
    )
    out["cupy"] = f"{_version(cupy_dist)} ({cupy_dist})" if cupy_dist else "not installed"
    if status["cupy"] is None:
        import cupy

        rt, drv = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
        out["CUDA runtime (cupy)"] = f"{rt // 1000}.{rt % 1000 // 10}"
        out["CUDA driver API"] = f"{drv // 1000}.{drv % 1000 // 10}"
        props = cupy.cuda.runtime.getDeviceProperties(0)
        out["GPU (cupy)"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        out["CUPY_TF32"] = os.environ.get("CUPY_TF32", "unset (no TF32)")
    out["torch"] = _version("torch")
    if status["torch:cuda"] is None:
        import torch

        out["torch CUDA"] = str(torch.version.cuda)
        out["GPU (torch)"] = torch.cuda.get_device_name(0)
        out["torch allow_tf32 (matmul)"] = str(torch.backends.cuda.matmul.allow_tf32)
    out["jax"] = _version("jax")
    out["jaxlib"] = _version("jaxlib")
    plugin = next((d for d in ("jax-cuda13-plugin", "jax-cuda12-plugin") if _version(d)[0].isdigit()), "")
    out["jax CUDA plugin"] = f"{plugin} {_version(plugin)}" if plugin else "not installed"
    if status["jax:cuda"] is None:
        import jax

        dev = jax.devices("gpu")[0]
        out["GPU (jax)"] = dev.device_kind
        precision = getattr(jax.config, "jax_default_matmul_precision", None)
        out["jax default matmul precision"] = str(precision or "default (TF32 in float32)")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            q = "name,driver_version,memory.total,clocks.max.sm"
            res = subprocess.run(
                [smi, f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            )
            if res.returncode == 0 and res.stdout.strip():
                out["nvidia-smi (name, driver, memory, max SM clock)"] = res.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    for var in ("CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_PREALLOCATE"):
        if var in os.environ:
            out[var] = os.environ[var] or "(empty)"
    return out


def detect(work: Path) -> int:
    status = gpu_status()
    info = versions(status)
    usable = [name for name, why in status.items() if why is None]
    lines = ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in info.items()]
    lines += [f"| GPU via {name} | {'yes' if why is None else 'no: ' + why} |" for name, why in status.items()]
    _write(work / "versions.md", "\n".join(lines) + "\n")
    stamp = time.strftime("%Y-%m-%d %H:%M %Z")
    (work / "env.json").write_text(json.dumps({"date": stamp, "versions": info, "gpu": status}, indent=1))
    for k, v in info.items():
        print(f"  {k:<44} {v}")
    for name, why in status.items():
        print(f"  GPU via {name:<36} {'yes' if why is None else 'no (' + why + ')'}")
    if not usable:
        return NO_GPU
    if info["hessarray"].startswith("does not import"):
        log(f"hessarray {info['hessarray']}: install its dependencies first (asv_bench/README.md, 'GPU')")
        return 2
    return 0


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


def median_time(call: Callable[[], Any], budget: float, min_reps: int = 3, max_reps: int = 30) -> tuple[float, int]:
    """Median seconds of ``call()`` (which must end synchronised) and the number of calls:
    at least ``min_reps``, then more while the total stays within ``budget`` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < budget):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(times)


def fmt_s(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def free_gpu_memory() -> None:
    """Return cached device memory to the driver between runs (three allocators share it)."""
    gc.collect()
    if "cupy" in sys.modules:
        try:
            sys.modules["cupy"].get_default_memory_pool().free_all_blocks()
        except Exception:
            pass
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# The asv GPU benchmarks, timed without asv
# --------------------------------------------------------------------------------------------


def _asv_classes() -> list[type]:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from benchmarks import end_to_end, kernels

    out = []
    for module in (kernels, end_to_end):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__ and not name.startswith("_") and hasattr(cls, "params"):
                out.append(cls)
    return out


def _param_lists(cls: type) -> list[list]:
    params = cls.params
    if params and not isinstance(params[0], list | tuple):  # one parameter: a plain list
        params = [params]
    return [list(p) for p in params]


def run_asv(
    work: Path, backends: list[str], budget: float, bench: str | None, per_call: float, min_reps: int = 3
) -> int:
    """Every asv benchmark with a ``backend`` parameter, for ``backends``: ``setup`` (a
    ``NotImplementedError`` there skips the case, as asv does), then each ``time_*`` method
    timed (median) and each ``track_*`` method's value; ``peakmem_*`` (process memory) left out."""
    deadline = time.monotonic() + budget
    rows: dict[str, dict[str, str]] = {}
    failures = 0

    def save() -> None:
        lines = [
            f"Each `time_*` method: median of at least {min_reps} calls (about {per_call:.2f} s of calls); "
            "`track_*`: the value. n/a: setup raised NotImplementedError (as in asv).",
            "",
            "| benchmark | " + " | ".join(backends) + " |",
            "|---|" + "---|" * len(backends),
        ]
        for key, cells in rows.items():
            lines.append(f"| {key} | " + " | ".join(cells.get(b, "") for b in backends) + " |")
        _write(work / "asv.md", "\n".join(lines) + "\n")

    for cls in _asv_classes():
        names = list(cls.param_names)
        if "backend" not in names:
            continue
        at = names.index("backend")
        lists = _param_lists(cls)
        methods = sorted(m for m in dir(cls) if m.startswith(("time_", "track_")))
        others = [p for i, p in enumerate(lists) if i != at]
        for rest in itertools.product(*others):
            for backend in backends:
                if backend not in lists[at]:
                    continue
                combo = list(rest)
                combo.insert(at, backend)
                label = ", ".join(repr(v) for i, v in enumerate(combo) if i != at)
                wanted = [m for m in methods if not bench or re.search(bench, f"{cls.__name__}.{m}({label})")]
                if not wanted:
                    continue
                keys = {m: f"{cls.__name__}.{m}({label})" for m in wanted}
                if time.monotonic() > deadline:
                    for k in keys.values():
                        rows.setdefault(k, {})[backend] = "not run (time budget)"
                    continue
                bench_obj = cls()
                try:
                    bench_obj.setup(*combo)
                except NotImplementedError as exc:
                    for k in keys.values():
                        rows.setdefault(k, {})[backend] = "n/a"
                    log(f"{cls.__name__}{tuple(combo)}: skipped ({exc})")
                    continue
                except Exception as exc:
                    failures += 1
                    for k in keys.values():
                        rows.setdefault(k, {})[backend] = f"setup failed: {type(exc).__name__}"
                    log(f"{cls.__name__}{tuple(combo)}: setup FAILED: {type(exc).__name__}: {exc}")
                    continue
                for m, key in keys.items():
                    fn = getattr(bench_obj, m)
                    try:
                        if m.startswith("track_"):
                            value = fn(*combo)
                            unit = getattr(cls, "unit", "")
                            cell = f"{value / 2**20:.1f} MiB" if unit == "bytes" else f"{value} {unit}".strip()
                        else:
                            med, _ = median_time(lambda fn=fn, combo=combo: fn(*combo), per_call, min_reps)
                            cell = fmt_s(med)
                    except Exception as exc:
                        failures += 1
                        cell = f"failed: {type(exc).__name__}"
                        log(f"{key} [{backend}]: FAILED: {type(exc).__name__}: {exc}")
                    rows.setdefault(key, {})[backend] = cell
                    log(f"{key} [{backend}]: {cell}")
                if hasattr(bench_obj, "teardown"):
                    bench_obj.teardown(*combo)
                del bench_obj
                free_gpu_memory()
                save()
    save()
    return 1 if failures else 0


# --------------------------------------------------------------------------------------------
# hessarray against JAX and torch.func
# --------------------------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    d: int
    width: int
    batch: int
    kind: str  # "hessian": value, gradient, Hessian; "laplacian": the Laplacian alone
    depth: int = 4


GPU_CASES = [
    Case("pinn", "PINN-like", 2, 64, 10_000, "hessian"),
    Case("mid", "mid", 10, 256, 2_000, "hessian"),
    Case("pinn1m", "PINN-like, batch 10⁶", 2, 64, 1_000_000, "hessian"),
    Case("laplacian", "Laplacian", 50, 128, 50_000, "laplacian"),
]
SMOKE_BATCH = {"pinn": 64, "mid": 32, "pinn1m": 300, "laplacian": 16}
#: The case whose FLOP rate is set against the GEMM rate.
RATE_CASE = "pinn1m"


@dataclass
class Runner:
    call: Callable[[], Any]  # one timed call: compute on the device's input and synchronise
    head: Callable[[], tuple]  # the first CHECK_ROWS rows of each output, as NumPy float64
    flops: float | None = None  # hessarray: per-sample multiply-adds of the plan's mode
    note: str = ""


@dataclass
class Row:
    case: str
    dtype: str
    system: str
    batch: int
    median_s: float | None = None
    calls: int = 0
    rel_error: float | None = None
    ok: bool | None = None
    flops: float | None = None
    note: str = ""


@dataclass
class Env:
    """Where the comparison runs: the GPU, or (``--cpu-smoke``) the CPU."""

    gpu: bool
    status: dict[str, str | None] = field(default_factory=dict)

    def why_not(self, lib: str) -> str | None:
        """``None`` when ``lib`` ("cupy", "torch", "jax") can run here, else why not."""
        if not self.gpu:
            if lib == "cupy":
                return "CuPy needs a GPU"
            try:
                __import__(lib)
            except ImportError:
                return f"{lib} is not installed"
            return None
        return self.status[{"cupy": "cupy", "torch": "torch:cuda", "jax": "jax:cuda"}[lib]]

    def torch_device(self) -> Any:
        import torch

        return torch.device("cuda", 0) if self.gpu else torch.device("cpu")

    def jax_device(self) -> Any:
        import jax

        return jax.devices("gpu" if self.gpu else "cpu")[0]

    def torch_sync(self) -> None:
        if self.gpu:
            import torch

            torch.cuda.synchronize()


def _compare_module() -> Any:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import compare

    return compare


def _sample_fn(ops: list, tanh: Callable, total: Callable) -> Callable:
    """One sample ``(d,) -> scalar`` of the MLP described by ``ops`` (``compare.Spec`` ops)."""

    def f(x):
        for op in ops:
            if op[0] == "dense":
                x = op[1] @ x + op[2]
            elif op[0] == "act":
                x = tanh(x)
            else:
                x = total(x)
        return x

    return f


def _head(outs: tuple, to_numpy: Callable) -> tuple:
    return tuple(np.asarray(to_numpy(o[:CHECK_ROWS]), dtype=np.float64) for o in outs)


def _plan_note(plan: Any, batch: int) -> str:
    blocks = -(-batch // max(plan.chunk_size, 1))
    return f"{plan.mode} mode, {blocks} block{'s' if blocks > 1 else ''}"


def _ha_call(ha: Any, kind: str, **options: Any) -> Callable:
    if kind == "laplacian":
        return lambda model, x: (ha.laplacian(model, x, **options),)
    return lambda model, x: tuple(ha.derivatives(model, x, **options))


class Skip(Exception):
    """A system that has nothing to add in this case (the row says why)."""


def build_ha_cupy(env: Env, spec: Any, case: Case, dtype: Any, x: np.ndarray) -> Runner:
    import cupy

    import hessarray as ha

    cmp = _compare_module()
    model = cmp.ha_model(spec, dtype, cupy.asarray)
    xd = cupy.asarray(x)
    run = _ha_call(ha, case.kind)
    plan = ha.plan(model, xd)
    dev = cupy.cuda.Device()

    def call():
        out = run(model, xd)
        dev.synchronize()
        return out

    return Runner(call, lambda: _head(call(), cupy.asnumpy), plan.flops[plan.mode], _plan_note(plan, case.batch))


def build_ha_torch(env: Env, spec: Any, case: Case, dtype: Any, x: np.ndarray) -> Runner:
    import torch

    import hessarray as ha

    cmp = _compare_module()
    dev = env.torch_device()
    model = cmp.ha_model(spec, dtype, lambda a: torch.asarray(a, device=dev))
    xd = torch.asarray(x, device=dev)
    run = _ha_call(ha, case.kind)
    plan = ha.plan(model, xd)

    def call():
        with torch.no_grad():
            out = run(model, xd)
        env.torch_sync()
        return out

    note = _plan_note(plan, case.batch)
    return Runner(call, lambda: _head(call(), lambda a: a.cpu().numpy()), plan.flops[plan.mode], note)


def build_ha_jax(env: Env, spec: Any, case: Case, dtype: Any, x: np.ndarray, device_budget: bool = False) -> Runner:
    """hessarray inside ``jax.jit``. Traced, a call sees shapes only, and its default memory
    budget is the CPU's; ``device_budget``: pass the budget a call on the concrete input gets
    (half the GPU's free memory) as ``max_memory``."""
    import jax

    import hessarray as ha

    cmp = _compare_module()
    dev = env.jax_device()
    arrays = {k: jax.device_put(v, dev) for k, v in cmp._spec_arrays(spec, dtype).items()}
    xd = jax.device_put(x, dev)
    options = {}
    if device_budget:
        found: dict[str, Any] = {}

        def plan_only(arrays, x):  # the default plan under tracing: shapes only, nothing compiled
            found["plan"] = ha.plan(cmp.ha_model(cmp._with_arrays(spec, arrays), dtype, lambda a: a), x)
            return x

        jax.eval_shape(plan_only, arrays, xd)
        if found["plan"].chunk_size >= case.batch:
            raise Skip("one block already under jit")
        concrete = ha.plan(cmp.ha_model(spec, dtype, lambda a: jax.device_put(a, dev)), xd)
        options["max_memory"] = getattr(concrete, "max_memory", None)
        if not options["max_memory"]:
            raise Skip("no device budget reported")
    run = _ha_call(ha, case.kind, **options)
    traced: dict[str, Any] = {}

    @jax.jit
    def jitted(arrays, x):  # the weights are arguments: no large constants compiled in
        model = cmp.ha_model(cmp._with_arrays(spec, arrays), dtype, lambda a: a)
        traced["plan"] = ha.plan(model, x)  # the plan the traced call makes (its budget: shapes only)
        return run(model, x)

    def call():
        return jax.block_until_ready(jitted(arrays, xd))

    jitted.lower(arrays, xd)  # traces once: the plan
    plan = traced["plan"]
    if device_budget:
        plan = ha.plan(cmp.ha_model(spec, dtype, lambda a: jax.device_put(a, dev)), xd, **options)
    note = _plan_note(plan, case.batch) + ", jit"
    return Runner(call, lambda: _head(call(), np.asarray), plan.flops[plan.mode], note)


def build_jax(env: Env, spec: Any, case: Case, dtype: Any, x: np.ndarray) -> Runner:
    import jax
    import jax.numpy as jnp

    cmp = _compare_module()
    dev = env.jax_device()
    arrays = {k: jax.device_put(v, dev) for k, v in cmp._spec_arrays(spec, dtype).items()}
    xd = jax.device_put(x, dev)

    @jax.jit
    def jitted(arrays, x):
        f = _sample_fn(cmp._with_arrays(spec, arrays).ops, jnp.tanh, jnp.sum)
        if case.kind == "laplacian":
            return (jax.vmap(lambda xi: jnp.trace(jax.hessian(f)(xi)))(x),)
        value, grad = jax.vmap(jax.value_and_grad(f))(x)
        return value, grad, jax.vmap(jax.hessian(f))(x)

    def call():
        return jax.block_until_ready(jitted(arrays, xd))

    return Runner(call, lambda: _head(call(), np.asarray))


def build_torch_func(env: Env, spec: Any, case: Case, dtype: Any, x: np.ndarray) -> Runner:
    import torch
    from torch.func import grad_and_value, hessian, vmap

    dev = env.torch_device()
    ops = [
        tuple(torch.asarray(a, device=dev) if isinstance(a, np.ndarray) else a for a in op) for op in spec.cast(dtype)
    ]
    f = _sample_fn(ops, torch.tanh, torch.sum)
    xd = torch.asarray(x, device=dev)
    if case.kind == "laplacian":
        lap = vmap(lambda xi: torch.diagonal(hessian(f)(xi)).sum())

        def compute():
            return (lap(xd),)
    else:
        gv, hs = vmap(grad_and_value(f)), vmap(hessian(f))

        def compute():
            g, v = gv(xd)
            return v, g, hs(xd)

    def call():
        out = compute()
        env.torch_sync()
        return out

    return Runner(call, lambda: _head(call(), lambda a: a.detach().cpu().numpy()))


#: (name, library it needs, builder, is hessarray)
SYSTEMS = [
    ("hessarray CuPy", "cupy", build_ha_cupy, True),
    ("hessarray torch", "torch", build_ha_torch, True),
    ("hessarray JAX (jit)", "jax", build_ha_jax, True),
    ("hessarray JAX (jit, device budget)", "jax", partial(build_ha_jax, device_budget=True), True),
    ("JAX jit(vmap(hessian))", "jax", build_jax, False),
    ("torch.func vmap(hessian)", "torch", build_torch_func, False),
]
JAX_PEER = "JAX jit(vmap(hessian))"


def reference(spec: Any, case: Case, x: np.ndarray) -> tuple:
    """hessarray on NumPy, float64, on the first rows of ``x``."""
    import hessarray as ha

    cmp = _compare_module()
    model = cmp.ha_model(spec, np.float64)
    return tuple(np.asarray(a) for a in _ha_call(ha, case.kind)(model, np.asarray(x[:CHECK_ROWS], np.float64)))


def gemm_rates(env: Env, n: int, budget: float) -> dict[str, dict[str, float]]:
    """FLOP/s of an ``n × n`` matrix product per library and dtype (cuBLAS on the GPU; full
    float32, no TF32: JAX asked for ``Precision.HIGHEST``)."""
    rng = np.random.default_rng(0)
    host = {
        dt: (rng.random((n, n), dtype=dt) - 0.5, rng.random((n, n), dtype=dt) - 0.5) for dt in ("float32", "float64")
    }
    out: dict[str, dict[str, float]] = {}
    for lib in ("cupy", "torch", "jax"):
        if env.why_not(lib):
            continue
        try:
            for dt, (a, b) in host.items():
                if lib == "cupy":
                    import cupy

                    da, db = cupy.asarray(a), cupy.asarray(b)
                    dev = cupy.cuda.Device()

                    def call(da=da, db=db, dev=dev):
                        cupy.matmul(da, db)
                        dev.synchronize()
                elif lib == "torch":
                    import torch

                    da, db = torch.asarray(a, device=env.torch_device()), torch.asarray(b, device=env.torch_device())

                    def call(da=da, db=db):
                        torch.matmul(da, db)
                        env.torch_sync()
                else:
                    import jax
                    import jax.numpy as jnp

                    dev = env.jax_device()
                    da, db = jax.device_put(a, dev), jax.device_put(b, dev)
                    mm = jax.jit(lambda p, q: jnp.matmul(p, q, precision=jax.lax.Precision.HIGHEST))

                    def call(da=da, db=db, mm=mm):
                        jax.block_until_ready(mm(da, db))

                call()
                med, _ = median_time(call, budget, min_reps=5)
                out.setdefault(lib, {})[dt] = 2 * n**3 / med
                log(f"GEMM {n}×{n} {dt} via {lib}: {out[lib][dt] / 1e12:.2f} TFLOP/s")
        except Exception as exc:
            log(f"GEMM via {lib} failed: {type(exc).__name__}: {exc}")
        free_gpu_memory()
    return out


def run_compare(
    work: Path, env: Env, cases: list[Case], dtypes: list[str], budget: float, per_call: float, min_reps: int = 3
) -> int:
    deadline = time.monotonic() + budget
    cmp = _compare_module()
    if not env.why_not("jax"):
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64
    if env.gpu:
        log("GPU libraries:", {k: v or "usable" for k, v in env.status.items()})
    gemm = gemm_rates(env, 8192 if env.gpu else 256, 1.0 if env.gpu else 0.05)
    rows: list[Row] = []
    failures = 0

    def save() -> None:
        (work / "compare.json").write_text(
            json.dumps({"gpu": env.gpu, "gemm": gemm, "rows": [asdict(r) for r in rows]}, indent=1)
        )
        _write(work / "compare.md", compare_markdown(rows, gemm, cases, env.gpu))

    save()
    for case in cases:
        spec = cmp.mlp_spec(case.d, case.width, depth=case.depth)
        x64 = np.random.default_rng(1).uniform(-1.0, 1.0, (case.batch, case.d))
        for dt in dtypes:
            dtype = np.dtype(dt).type
            x = x64.astype(dtype)
            ref = reference(spec, case, x)
            for name, lib, build, _ in SYSTEMS:
                row = Row(case.key, dt, name, case.batch)
                rows.append(row)
                why = env.why_not(lib)
                if why:
                    row.note = f"skipped: {why}"
                    continue
                if time.monotonic() > deadline:
                    row.note = "not run (time budget)"
                    continue
                runner = None
                try:
                    runner = build(env, spec, case, dtype, x)
                    got = runner.head()  # also the warm-up (JAX: compiles)
                    row.rel_error = cmp.rel_error(got, ref)
                    if not math.isfinite(row.rel_error):
                        row.rel_error = float("inf")
                    row.ok = row.rel_error <= TOLERANCE[dt]
                    if not row.ok:
                        failures += 1
                    row.median_s, row.calls = median_time(runner.call, per_call, min_reps)
                    row.flops, row.note = runner.flops, runner.note
                except Skip as why:
                    row.note = f"skipped: {why}"
                except Exception as exc:
                    failures += 1
                    row.note = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
                    log(f"{case.key} {dt} {name}: FAILED: {type(exc).__name__}: {exc}")
                finally:
                    del runner
                    free_gpu_memory()
                log(
                    f"{case.key:<9} B={case.batch:<8} {dt} {name:<36} {fmt_s(row.median_s):>10}  "
                    f"err {row.rel_error if row.rel_error is not None else float('nan'):.1e}  {row.note}"
                )
                save()
    save()
    return 1 if failures else 0


def _best_ha(rows: list[Row], case: str, dt: str) -> Row | None:
    timed = [r for r in rows if r.case == case and r.dtype == dt and r.system.startswith("hessarray") and r.median_s]
    return min(timed, key=lambda r: r.median_s) if timed else None


def _row(rows: list[Row], case: str, dt: str, system: str) -> Row | None:
    return next((r for r in rows if r.case == case and r.dtype == dt and r.system == system), None)


def compare_markdown(rows: list[Row], gemm: dict, cases: list[Case], gpu: bool) -> str:
    where = "GPU" if gpu else "CPU (smoke run, tiny sizes)"
    lines: list[str] = []
    for case in cases:
        mine = [r for r in rows if r.case == case.key]
        if not mine:
            continue
        what = "Laplacian" if case.kind == "laplacian" else "value, gradient and Hessian"
        lines += [
            f"#### {case.label}: d={case.d}, width {case.width}, depth {case.depth} tanh, batch {case.batch}, {what}",
            "",
            "| system | dtype | median | JAX jit / this | rel. error | note |",
            "|---|---|---|---|---|---|",
        ]
        for r in mine:
            jax_row = _row(rows, r.case, r.dtype, JAX_PEER)
            ratio = f"{jax_row.median_s / r.median_s:.2f}×" if r.median_s and jax_row and jax_row.median_s else "—"
            err = "—" if r.rel_error is None else f"{r.rel_error:.1e}" + ("" if r.ok else " **MISMATCH**")
            lines.append(f"| {r.system} | {r.dtype} | {fmt_s(r.median_s)} | {ratio} | {err} | {r.note} |")
        lines.append("")
    lines += [f"#### Goals ({where})", "", "| goal | measured | verdict |", "|---|---|---|"]
    for case in cases:
        if case.key not in ("pinn", "mid"):
            continue
        for dt in sorted({r.dtype for r in rows if r.case == case.key}):
            best, peer = _best_ha(rows, case.key, dt), _row(rows, case.key, dt, JAX_PEER)
            goal = f"{case.label} {dt}: hessarray at least JAX jit's speed"
            if best and peer and peer.median_s:
                ratio = peer.median_s / best.median_s
                verdict = "met" if ratio >= 1.0 else "**missed**"
                measured = f"{best.system} {fmt_s(best.median_s)}, JAX {fmt_s(peer.median_s)}: {ratio:.2f}×"
                lines.append(f"| {goal} | {measured} | {verdict} |")
            else:
                lines.append(f"| {goal} | not measured | — |")
    rate_case = next((c for c in cases if c.key == RATE_CASE), None)
    for dt in ("float32", "float64"):
        if rate_case is None:
            break
        best = _best_ha(rows, RATE_CASE, dt)
        ref = max((v[dt] for v in gemm.values() if dt in v), default=None)
        goal = f"batch {rate_case.batch} {dt}: hessarray's FLOP rate ≥ 50 % of the GEMM rate"
        if best and best.flops and ref:
            rate = 2 * best.flops * best.batch / best.median_s
            frac = rate / ref
            lib = max((k for k in gemm if dt in gemm[k]), key=lambda k: gemm[k][dt])
            lines.append(
                f"| {goal} | {best.system}: {rate / 1e12:.2f} TFLOP/s of {ref / 1e12:.2f} ({lib} GEMM): "
                f"{100 * frac:.0f} % | {'met' if frac >= 0.5 else '**missed**'} |"
            )
        else:
            lines.append(f"| {goal} | not measured | — |")
    lines.append("")
    if gemm:
        lines += ["GEMM rates measured in the same run (square matrix product, full precision):", ""]
        lines += ["| library | float32 | float64 |", "|---|---|---|"]
        for lib, v in gemm.items():
            cells = [f"{v[dt] / 1e12:.2f} TFLOP/s" if dt in v else "—" for dt in ("float32", "float64")]
            lines.append(f"| {lib} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        f"FLOPs of hessarray: `2 · ha.plan(model, x).flops[plan.mode] · batch`. Rel. error: max |a − b| / max |b| of "
        f"the first {CHECK_ROWS} samples against hessarray on NumPy in float64 (tolerance: float32 "
        f"{TOLERANCE['float32']:.0e}, as JAX's default float32 matmul on GPUs is TF32; "
        f"float64 {TOLERANCE['float64']:.0e})."
    )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _tests_summary(log_path: Path) -> list[str]:
    if not log_path.exists():
        return ["Not run."]
    text = log_path.read_text(errors="replace").splitlines()
    summary = [ln for ln in text if re.search(r"\b(passed|failed|error|skipped|deselected)\b.* in [\d.]+s", ln)]
    bad = [ln for ln in text if ln.startswith(("FAILED ", "ERROR "))]
    timeout = [ln for ln in text if ln.startswith("gpu_check: ")]
    if summary:
        out = ["`" + summary[-1].strip("= ") + "`"]
    else:  # stopped before the end: count the per-test lines (pytest -v)
        counts = {
            w: sum(1 for ln in text if re.search(rf"\b{w}\b", ln)) for w in ("PASSED", "FAILED", "ERROR", "SKIPPED")
        }
        out = ["no pytest summary (stopped?); per-test lines: " + ", ".join(f"{n} {w}" for w, n in counts.items())]
        bad = [ln for ln in text if "::" in ln and re.search(r"\b(FAILED|ERROR)\b", ln)]
    out += [f"- {ln}" for ln in timeout]
    if bad:
        out += ["", "Failures:", ""] + [f"- `{ln[:200]}`" for ln in bad[:40]]
        if len(bad) > 40:
            out.append(f"- … and {len(bad) - 40} more (tests.log)")
    return out


def section(work: Path, smoke: bool = False) -> str:
    """The ``gpu-bench`` section of ``docs/benchmarks.md`` from the fragments in ``work``."""
    lines = [BEGIN, "## On a GPU", ""]
    env_file = work / "env.json"
    stamp = json.loads(env_file.read_text()).get("date", "?") if env_file.exists() else "?"
    if smoke:
        lines += ["**CPU smoke run at tiny sizes** (`gpu_compare.py --cpu-smoke`): the code, not the speed.", ""]
    lines += [
        f"Command: `bash asv_bench/gpu_check.sh` (run {stamp}; set-up in asv_bench/README.md, 'GPU'). "
        "Timings are medians of synchronised calls on one GPU.",
        "",
    ]
    parts = [
        ("### Versions and device", work / "versions.md"),
        ("### asv GPU benchmarks", work / "asv.md"),
        ("### hessarray against JAX and torch.func", work / "compare.md"),
    ]
    for title, path in parts[:1]:
        lines += [title, "", path.read_text().rstrip() if path.exists() else "Not run.", ""]
    lines += ['### Tests on the GPU backends (`pytest -k "cupy or cuda"`)', ""] + _tests_summary(work / "tests.log")
    lines.append("")
    for title, path in parts[1:]:
        lines += [title, "", path.read_text().rstrip() if path.exists() else "Not run.", ""]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_section(text: str, docs: Path) -> None:
    """Replace the marked section of ``docs`` in place (or append it when absent)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import doc_section

    doc_section.write_section(text, BEGIN, END, docs)


def report(work: Path, docs: Path | None, smoke: bool = False) -> int:
    text = section(work, smoke)
    try:
        _write(work / "gpu_section.md", text)
    except OSError:  # fragments copied back read-only: the docs are what matters then
        pass
    if docs is not None:
        write_section(text, docs)
        log(f"wrote the gpu-bench section of {docs}")
    return 0


# --------------------------------------------------------------------------------------------


PARTS = ("detect", "asv", "compare", "report")


def _one_torch_thread() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("parts", nargs="*", help="what to run: detect, asv, compare, report (in this order)")
    p.add_argument("--work", type=Path, help="folder for the fragments (default: a new temporary folder)")
    p.add_argument(
        "--cpu-smoke", action="store_true", help="run detect, asv, compare and report on the CPU at tiny sizes"
    )
    p.add_argument("--budget", type=float, default=None, help="seconds for the asv or compare part (default 60 / 150)")
    p.add_argument("--cases", nargs="+", default=None, help="comparison cases: " + " ".join(c.key for c in GPU_CASES))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--bench", default=None, help="regular expression on 'Class.method(params)' for the asv part")
    p.add_argument(
        "--docs", type=Path, default=None, help="markdown file for report (default docs/benchmarks.md; smoke: none)"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    parts = cfg.parts or (list(PARTS) if cfg.cpu_smoke else [])
    if not parts or set(parts) - set(PARTS):
        print(f"name parts among {', '.join(PARTS)}, or give --cpu-smoke; got {parts}", file=sys.stderr)
        return 2
    work = cfg.work
    if work is None:
        import tempfile

        work = Path(tempfile.mkdtemp(prefix="gpu_compare."))
    work.mkdir(parents=True, exist_ok=True)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    wanted = cfg.cases or [c.key for c in GPU_CASES]
    unknown = set(wanted) - {c.key for c in GPU_CASES}
    if unknown:
        print(f"unknown cases {sorted(unknown)}", file=sys.stderr)
        return 2
    cases = [c for c in GPU_CASES if c.key in wanted]
    if cfg.cpu_smoke:
        cases = [Case(c.key, c.label, c.d, c.width, SMOKE_BATCH[c.key], c.kind, c.depth) for c in cases]
    rc = 0
    for part in parts:
        log(f"--- {part} ({'CPU smoke' if cfg.cpu_smoke else 'GPU'}) -> {work}")
        if part == "detect":
            got = detect(work)
            if not cfg.cpu_smoke and got:
                return got
        elif part == "asv":
            backends = ASV_CPU_SMOKE_BACKENDS if cfg.cpu_smoke else ASV_GPU_BACKENDS
            smoke = r"^Kernels\.time_dense_push\(32\)|^InputHessian\.time_derivatives\('narrow', 'forward'\)"
            bench = cfg.bench or (smoke if cfg.cpu_smoke else None)
            budget = cfg.budget or (30.0 if cfg.cpu_smoke else 60.0)
            if cfg.cpu_smoke:
                _one_torch_thread()
            rc |= run_asv(work, backends, budget, bench, 0.0 if cfg.cpu_smoke else 0.15, 1 if cfg.cpu_smoke else 3)
        elif part == "compare":
            status = {} if cfg.cpu_smoke else gpu_status()
            env = Env(gpu=not cfg.cpu_smoke, status=status)
            if env.gpu and all(status.values()):
                log("no GPU: the comparison is skipped")
                return NO_GPU
            budget = cfg.budget or (120.0 if cfg.cpu_smoke else 150.0)
            if cfg.cpu_smoke:  # shared CPUs: one thread, one timed call each (the code is what is checked)
                _one_torch_thread()
                rc |= run_compare(work, env, cases, cfg.dtypes, budget, 0.0, min_reps=1)
            else:
                rc |= run_compare(work, env, cases, cfg.dtypes, budget, 0.8)
        elif part == "report":
            docs = cfg.docs if (cfg.docs or cfg.cpu_smoke) else DOCS
            rc |= report(work, docs, cfg.cpu_smoke)
    if cfg.cpu_smoke:
        print((work / "gpu_section.md").read_text() if (work / "gpu_section.md").exists() else "")
    return rc


if __name__ == "__main__":
    sys.exit(main())
