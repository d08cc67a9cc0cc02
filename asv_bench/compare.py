"""Compare hessarray with other systems that compute per-sample input Hessians.

Run from the repository root::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/compare.py          # full, ~25 min
    python asv_bench/compare.py --quick                                              # smoke test, < 1 min
    python asv_bench/compare.py --cases pinn hessquik                                 # a subset
    python asv_bench/compare.py --cases activations --write       # the activation grid, ~10 min
    python asv_bench/compare.py --quick --cases activations       # its smoke test, < 30 s

(The ``env -u`` prefix lets OpenBLAS pick its kernel for this CPU; it belongs to this command
only, never to the tests or CI.)

In one process, for every case, the same model (same random weights) is built in hessarray
and in each installed peer, and value, gradient and Hessian of every sample are computed:

* hessarray on NumPy (``mode="auto"``, and ``"forward"`` / ``"reverse"`` separately), on torch
  (CPU) and on JAX (inside ``jax.jit``);
* TensorFlow: nested ``tf.GradientTape`` + ``batch_jacobian`` in ``tf.function``, with and
  without ``jit_compile=True`` (XLA);
* JAX: ``jax.jit`` of ``jax.vmap(jax.hessian(f))`` and ``jax.vmap(jax.value_and_grad(f))``;
* torch.func: ``vmap(hessian(f))`` and ``vmap(grad_and_value(f))``;
* hessQuik (its own ``NN`` of ``singleLayer`` / ``resnetLayer``), forward and backward mode,
  in blocks of at most 1000 samples.

Every result is checked against hessarray (float64: relative 1e-10) before it is timed; a
row that disagrees is marked MISMATCH and not timed. Systems are timed round-robin (one call
of each per round, after a warm-up; each round starts with the next system) and the median is
reported: on a shared, noisy machine,
ratios taken in one run are meaningful, absolute times less so.

The activation grid (``--cases activations``, :func:`activation_grid`) runs every activation
of :data:`ACTIVATIONS` as an MLP and as a residual network at the PINN-like, mid and wide
settings (and at B=10 and 100 against JAX ``jit``): hessarray on NumPy against the fastest
peer, with the executor that ran (``ha.plan(model, x).executor``). ``--portable`` switches
NumPy's compiled executor off for the whole run.

The full run writes ``docs/benchmarks.md`` (the activation grid into its marked section
``activations``), ``docs/benchmarks_batch.png`` and ``docs/benchmarks_activations.png``;
``--quick`` and ``--cases`` runs write nothing unless ``--write`` is given (``--cases
activations --write`` replaces only its own section).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
try:
    import hessarray as ha
except ImportError:  # running from a checkout without installing it
    sys.path.insert(0, str(REPO))
    import hessarray as ha

if str(Path(__file__).resolve().parent) not in sys.path:  # doc_section, when imported from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmarks.common import compiled_flags, set_compiled  # noqa: E402
from doc_section import markers, write_section  # noqa: E402

LOG2 = math.log(2.0)

# --------------------------------------------------------------------------------------------
# Problems: one description of the network, built in every system from the same arrays.
# --------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """A scalar-output network: a list of ops on a sample of width ``d``.

    Ops: ``("dense", W (out, in), b (out,))``, ``("act", name)``,
    ``("res", W, b, act, h)`` for ``x + h·act(W x + b)``, and ``("sum",)``.
    Activations: those of :data:`ACTIVATIONS` (``"tanh"``, ``"sin"``, ``"softplus"``,
    ``"silu"``, ``"sigmoid"``) and ``"logcosh"`` (``log cosh z``).
    """

    name: str
    d: int
    ops: list
    width: int = 0

    def cast(self, dtype: Any) -> list:
        out = []
        for op in self.ops:
            out.append(tuple(np.asarray(a, dtype=dtype) if isinstance(a, np.ndarray) else a for a in op))
        return out


#: The activations of the activation grid (:func:`activation_grid`), in the order of its tables.
ACTIVATIONS = ("tanh", "sin", "softplus", "silu", "sigmoid")


def mlp_spec(d: int, width: int, depth: int = 4, seed: int = 0, act: str = "tanh") -> Spec:
    """``dense d→w, act, (dense w→w, act) × (depth-1), dense w→1, Sum``."""
    rng = np.random.default_rng(seed)
    dims = [d] + [width] * depth + [1]
    ops: list = []
    for i in range(len(dims) - 1):
        W = rng.standard_normal((dims[i + 1], dims[i])) / math.sqrt(dims[i])
        b = 0.1 * rng.standard_normal(dims[i + 1])
        ops.append(("dense", W, b))
        if i < depth:
            ops.append(("act", act))
    ops.append(("sum",))
    return Spec(f"{act} mlp d={d} w={width}", d, ops, width)


def resnet_spec(
    d: int, first_act: str, width: int = 16, depth: int = 4, h: float = 0.5, seed: int = 0, act: str = "tanh"
) -> Spec:
    """``dense d→w, first_act, depth × residual(act, h), dense w→1, Sum``; by default
    hessQuik's timing network: ``dense d→16, first_act, 4 × residual(tanh, h=0.5), dense 16→1``."""
    rng = np.random.default_rng(seed)
    ops: list = [
        ("dense", rng.standard_normal((width, d)) / math.sqrt(d), 0.1 * rng.standard_normal(width)),
        ("act", first_act),
    ]
    for _ in range(depth):
        W = rng.standard_normal((width, width)) / math.sqrt(width)
        ops.append(("res", W, 0.1 * rng.standard_normal(width), act, h))
    ops.append(("dense", rng.standard_normal((1, width)) / math.sqrt(width), 0.1 * rng.standard_normal(1)))
    ops.append(("sum",))
    return Spec(f"resnet d={d} w={width} {first_act}/{act}", d, ops, width)


# --------------------------------------------------------------------------------------------
# Systems
# --------------------------------------------------------------------------------------------

Fn = Callable[[Any], tuple]


@dataclass
class Built:
    fn: Fn  # (x in the system's type) -> (value, grad, hess), finished (synchronised)
    to_input: Callable[[np.ndarray], Any]
    to_numpy: Callable[[tuple], tuple]
    flops: float | None = None  # per-sample multiply-adds of the algorithm run (hessarray)
    note: str = ""
    knob: str | None = None  # pool resizable at run time: "hessarray" (blocks, NumPy BLAS) or "torch"


@dataclass
class System:
    name: str
    peer: bool
    build: Callable[[Spec, Any], Built]
    missing: str | None = None  # why it cannot run here
    jit: bool = False  # compiled per input shape: no small probe before the full batch
    extra: dict = field(default_factory=dict)


def _np_out(out: tuple) -> tuple:
    return tuple(np.asarray(a) for a in out)


# -- hessarray --------------------------------------------------------------------------------


def ha_model(spec: Spec, dtype: Any, conv: Callable = np.asarray) -> ha.Sequential:
    acts = {
        "tanh": ha.Tanh,
        "sin": ha.Sin,
        "softplus": ha.Softplus,
        "silu": ha.SiLU,
        "sigmoid": ha.Sigmoid,
        "logcosh": ha.LogCosh,
    }
    layers = []
    for op in spec.cast(dtype):
        if op[0] == "dense":
            layers.append(ha.Dense(conv(op[1]), conv(op[2])))
        elif op[0] == "act":
            layers.append(acts[op[1]]())
        elif op[0] == "res":
            layers.append(ha.Residual(ha.Dense(conv(op[1]), conv(op[2])), acts[op[3]](), h=op[4]))
        else:
            layers.append(ha.Sum())
    return ha.Sequential(*layers)


def build_ha_numpy(mode: str) -> Callable[[Spec, Any], Built]:
    def build(spec: Spec, dtype: Any) -> Built:
        model = ha_model(spec, dtype)

        def fn(x):
            return tuple(ha.derivatives(model, x, mode=mode))

        probe = np.zeros((1, spec.d), dtype=dtype)
        plan = ha.plan(model, probe, mode=mode)
        return Built(fn, lambda x: np.asarray(x, dtype=dtype), _np_out, plan.flops[plan.mode], plan.mode, "hessarray")

    return build


def build_ha_torch(spec: Spec, dtype: Any) -> Built:
    import torch

    tdt = torch.float64 if dtype == np.float64 else torch.float32
    model = ha_model(spec, dtype, lambda a: torch.asarray(a, dtype=tdt))

    def fn(x):
        with torch.no_grad():
            return tuple(ha.derivatives(model, x))

    plan = ha.plan(model, torch.zeros((1, spec.d), dtype=tdt))
    return Built(
        fn,
        lambda x: torch.asarray(x, dtype=tdt),
        lambda o: tuple(a.numpy() for a in o),
        plan.flops[plan.mode],
        plan.mode,
        "torch",
    )


def build_ha_jax(spec: Spec, dtype: Any) -> Built:
    import jax
    import jax.numpy as jnp

    model = ha_model(spec, dtype, jnp.asarray)
    plan = ha.plan(model, jnp.zeros((1, spec.d), dtype=dtype))
    note = plan.mode
    run = jax.jit(lambda x: tuple(ha.derivatives(model, x)))  # the model's arrays closed over
    try:
        run(jnp.zeros((2, spec.d), dtype=dtype))
    except TypeError as exc:
        # Fallback: the model's arrays as arguments of the jitted function (then all tracers).
        arrays = {k: jnp.asarray(v) for k, v in _spec_arrays(spec, dtype).items()}

        def inner(arrays, x):
            return tuple(ha.derivatives(ha_model(_with_arrays(spec, arrays), dtype, lambda a: a), x))

        jitted = jax.jit(inner)
        run = lambda x: jitted(arrays, x)  # noqa: E731
        note += f"; weights passed as jit arguments (closure fails: {str(exc)[:60]}...)"
    return Built(
        lambda x: jax.block_until_ready(run(x)),
        lambda x: jnp.asarray(x, dtype=dtype),
        _np_out,
        plan.flops[plan.mode],
        note,
    )


def _spec_arrays(spec: Spec, dtype: Any) -> dict[str, np.ndarray]:
    return {
        f"{k}.{j}": a for k, op in enumerate(spec.cast(dtype)) for j, a in enumerate(op) if isinstance(a, np.ndarray)
    }


def _with_arrays(spec: Spec, arrays: dict) -> Spec:
    ops = [tuple(arrays.get(f"{k}.{j}", a) for j, a in enumerate(op)) for k, op in enumerate(spec.ops)]
    return Spec(spec.name, spec.d, ops, spec.width)


# -- JAX ----------------------------------------------------------------------------------------


def build_jax(spec: Spec, dtype: Any) -> Built:
    import jax
    import jax.numpy as jnp

    ops = [tuple(jnp.asarray(a) if isinstance(a, np.ndarray) else a for a in op) for op in spec.cast(dtype)]
    acts = {
        "tanh": jnp.tanh,
        "sin": jnp.sin,
        "softplus": jax.nn.softplus,
        "silu": jax.nn.silu,
        "sigmoid": jax.nn.sigmoid,
        "logcosh": lambda z: z + jax.nn.softplus(-2.0 * z) - LOG2,
    }

    def f(x):  # one sample (d,) -> scalar
        for op in ops:
            if op[0] == "dense":
                x = op[1] @ x + op[2]
            elif op[0] == "act":
                x = acts[op[1]](x)
            elif op[0] == "res":
                x = x + op[4] * acts[op[3]](op[1] @ x + op[2])
            else:
                x = jnp.sum(x)
        return x

    value_grad = jax.vmap(jax.value_and_grad(f))
    hess = jax.vmap(jax.hessian(f))
    run = jax.jit(lambda x: (*value_grad(x), hess(x)))
    return Built(lambda x: jax.block_until_ready(run(x)), lambda x: jnp.asarray(x, dtype=dtype), _np_out)


# -- torch.func ----------------------------------------------------------------------------------


def build_torch_func(spec: Spec, dtype: Any) -> Built:
    import torch
    from torch.func import grad_and_value, hessian, vmap

    tdt = torch.float64 if dtype == np.float64 else torch.float32
    ops = [tuple(torch.asarray(a) if isinstance(a, np.ndarray) else a for a in op) for op in spec.cast(dtype)]
    F = torch.nn.functional
    acts = {
        "tanh": torch.tanh,
        "sin": torch.sin,
        "softplus": F.softplus,
        "silu": F.silu,
        "sigmoid": torch.sigmoid,
        "logcosh": lambda z: z + F.softplus(-2.0 * z) - LOG2,
    }

    def f(x):
        for op in ops:
            if op[0] == "dense":
                x = op[1] @ x + op[2]
            elif op[0] == "act":
                x = acts[op[1]](x)
            elif op[0] == "res":
                x = x + op[4] * acts[op[3]](op[1] @ x + op[2])
            else:
                x = torch.sum(x)
        return x

    gv = vmap(grad_and_value(f))
    hs = vmap(hessian(f))

    def fn(x):
        g, v = gv(x)
        return v, g, hs(x)

    return Built(
        fn, lambda x: torch.asarray(x, dtype=tdt), lambda o: tuple(a.detach().numpy() for a in o), knob="torch"
    )


# -- TensorFlow --------------------------------------------------------------------------------


def build_tf(jit: bool) -> Callable[[Spec, Any], Built]:
    def build(spec: Spec, dtype: Any) -> Built:
        import tensorflow as tf

        tdt = tf.float64 if dtype == np.float64 else tf.float32
        ops = []
        for op in spec.cast(dtype):
            if op[0] in ("dense", "res"):  # x (B, in) @ Wᵀ
                op = (op[0], tf.constant(op[1].T), tf.constant(op[2]), *op[3:])
            ops.append(op)
        acts = {
            "tanh": tf.math.tanh,
            "sin": tf.math.sin,
            "softplus": tf.math.softplus,
            "silu": tf.nn.silu,
            "sigmoid": tf.math.sigmoid,
            "logcosh": lambda z: z + tf.math.softplus(-2.0 * z) - LOG2,
        }

        def model(x):  # (B, d) -> (B,)
            for op in ops:
                if op[0] == "dense":
                    x = tf.matmul(x, op[1]) + op[2]
                elif op[0] == "act":
                    x = acts[op[1]](x)
                elif op[0] == "res":
                    x = x + op[4] * acts[op[3]](tf.matmul(x, op[1]) + op[2])
                else:
                    x = tf.reduce_sum(x, axis=1)
            return x

        @tf.function(jit_compile=jit)
        def run(x):
            with tf.GradientTape() as outer:
                outer.watch(x)
                with tf.GradientTape() as inner:
                    inner.watch(x)
                    y = model(x)
                g = inner.gradient(y, x)  # samples are independent: the per-sample gradients
            return y, g, outer.batch_jacobian(g, x)

        return Built(
            run, lambda x: tf.constant(np.asarray(x, dtype=dtype), dtype=tdt), lambda o: tuple(a.numpy() for a in o)
        )

    return build


# -- hessQuik ----------------------------------------------------------------------------------

HQ_BLOCK = 1000
HQ_TENSOR_BYTES = 64 << 20  # hessQuik's largest tensor in a block (its blocks are at most 1000)


def hq_block(spec: Spec, dtype: Any) -> int:
    """Samples per hessQuik call: at most 1000, fewer when its per-sample tensors are big.

    Both of hessQuik's modes form ``(n_in, n_in, n_out)`` second-derivative tensors for every
    layer (``w³`` numbers per sample for a hidden ``w × w`` layer), and forward mode carries
    ``(d, d, n)`` Hessians; blocks are sized to keep the largest tensor near 64 MiB (larger
    blocks are slower: they no longer fit in any cache and page-fault on every allocation).
    """
    item = np.dtype(dtype).itemsize
    worst = 1
    for op in spec.ops:
        if op[0] in ("dense", "res"):
            o, i = op[1].shape
            worst = max(worst, i * i * o, spec.d * spec.d * o)
    return int(max(1, min(HQ_BLOCK, HQ_TENSOR_BYTES // (item * worst))))


def build_hessquik(forward: bool) -> Callable[[Spec, Any], Built]:
    def build(spec: Spec, dtype: Any) -> Built:
        import hessQuik.activations as hq_act
        import hessQuik.layers as hq_lay
        import hessQuik.networks as hq_net
        import torch

        tdt = torch.float64 if dtype == np.float64 else torch.float32
        acts = {
            "tanh": hq_act.tanhActivation,
            "logcosh": hq_act.antiTanhActivation,
            "softplus": getattr(hq_act, "softplusActivation", None),
            "sigmoid": getattr(hq_act, "sigmoidActivation", None),
        }
        used = {op[1] for op in spec.ops if op[0] == "act"} | {op[3] for op in spec.ops if op[0] == "res"}
        lacking = sorted(a for a in used if acts.get(a) is None)
        if lacking:
            raise NotImplementedError(f"hessQuik has no {', '.join(lacking)} activation")
        # hessQuik's antiTanh is log(2 cosh z) = log cosh z + log 2: the constant offset of the
        # features it feeds is cancelled in the biases downstream (exactly the same function).
        shift = {"tanh": 0.0, "logcosh": LOG2, "softplus": 0.0, "sigmoid": 0.0}
        layers, offset = [], np.zeros(spec.d)
        ops = spec.ops
        for k, op in enumerate(ops):
            if op[0] == "dense":
                W, b = op[1], op[2]
                nxt = ops[k + 1] if k + 1 < len(ops) else ("sum",)
                act = acts[nxt[1]]() if nxt[0] == "act" else hq_act.identityActivation()
                layer = hq_lay.singleLayer(W.shape[1], W.shape[0], act=act, dtype=tdt)
                _set(layer, W, b - W @ offset, tdt)
                layers.append(layer)
                offset = np.full(W.shape[0], shift[nxt[1]]) if nxt[0] == "act" else np.zeros(W.shape[0])
            elif op[0] == "res":
                W, b, act, h = op[1:]
                layer = hq_lay.resnetLayer(W.shape[0], h=h, act=acts[act](), dtype=tdt)
                _set(layer.layer, W, b - W @ offset, tdt)
                layers.append(layer)
                offset = offset + h * shift[act]
            elif op[0] == "sum":
                if layers[-1].dim_output() != 1:
                    raise ValueError("hessQuik comparison needs a final dense layer of width 1")
        net = hq_net.NN(*layers)
        block = hq_block(spec, dtype)

        def fn(x):
            vs, gs, hs = [], [], []
            with torch.no_grad():
                for start in range(0, x.shape[0], block):
                    f, df, d2f = net(x[start : start + block], do_gradient=True, do_Hessian=True, forward_mode=forward)
                    vs.append(f[:, 0])
                    gs.append(df[:, :, 0])
                    hs.append(d2f[:, :, :, 0])
            return torch.cat(vs), torch.cat(gs), torch.cat(hs)

        return Built(
            fn,
            lambda x: torch.asarray(x, dtype=tdt),
            lambda o: tuple(a.numpy() for a in o),
            note=f"blocks of {block}",
            knob="torch",
        )

    return build


def _set(layer: Any, W: np.ndarray, b: np.ndarray, tdt: Any) -> None:
    import torch

    with torch.no_grad():
        layer.K.copy_(torch.asarray(W.T.copy(), dtype=tdt))  # hessQuik: z = u @ K + b, K (in, out)
        layer.b.copy_(torch.asarray(b, dtype=tdt))


# -- registry ----------------------------------------------------------------------------------


def _missing(module: str) -> str | None:
    import importlib.util

    return None if importlib.util.find_spec(module) is not None else "not installed"


def make_systems() -> list[System]:
    tf_missing = _missing("tensorflow")
    return [
        System("hessarray numpy (auto)", False, build_ha_numpy("auto")),
        System("hessarray numpy (forward)", False, build_ha_numpy("forward")),
        System("hessarray numpy (reverse)", False, build_ha_numpy("reverse")),
        System("hessarray torch (auto)", False, build_ha_torch, _missing("torch")),
        System("hessarray jax.jit (auto)", False, build_ha_jax, _missing("jax"), jit=True),
        System("TensorFlow tf.function+XLA", True, build_tf(True), tf_missing, jit=True),
        System("TensorFlow tf.function", True, build_tf(False), tf_missing, jit=True),
        System("JAX jit(vmap(hessian))", True, build_jax, _missing("jax"), jit=True),
        System("torch.func vmap(hessian)", True, build_torch_func, _missing("torch")),
        System("hessQuik forward", True, build_hessquik(True), _missing("hessQuik")),
        System("hessQuik backward", True, build_hessquik(False), _missing("hessQuik")),
    ]


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------

NCORES = os.cpu_count() or 1


class Threads:
    """The thread pools that can be resized at run time: NumPy's BLAS, hessarray's block
    workers (``HESSARRAY_THREADS``) and torch's intra-op pool.

    On a small shared machine a multi-threaded pool can be many times slower than one thread
    (its workers wait for cores that other processes hold), so each system using one of these
    pools is timed with the faster of one thread and the library's default for ``NCORES``
    cores (chosen at warm-up). hessarray's default runs blocks on one worker per core, each
    with single-threaded BLAS. Pools a system does not use are set to one thread, so that
    their idle workers do not compete. JAX and TensorFlow keep their own default pools.
    """

    def __init__(self) -> None:
        try:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        except ImportError:  # pragma: no cover
            self._blas = None
        self._env = os.environ.get("HESSARRAY_THREADS")

    def apply(self, knob: str | None, n: int) -> None:
        """Give the pool ``knob`` (``"hessarray"``, ``"torch"`` or None) ``n`` threads."""
        mine = knob == "hessarray"
        if self._blas is not None:
            self._blas.limit(limits=n if mine else 1, user_api="blas")
        if mine and n > 1:  # the library's own choice
            if self._env is None:
                os.environ.pop("HESSARRAY_THREADS", None)
            else:
                os.environ["HESSARRAY_THREADS"] = self._env
        else:
            os.environ["HESSARRAY_THREADS"] = "1"
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(n if knob == "torch" else 1)

    def restore(self) -> None:
        """The libraries' defaults (for the sections that call hessarray directly)."""
        if self._blas is not None:
            self._blas.limit(limits=NCORES, user_api="blas")
        if self._env is None:
            os.environ.pop("HESSARRAY_THREADS", None)
        else:
            os.environ["HESSARRAY_THREADS"] = self._env


THREADS = Threads()


def rel_error(out: tuple, ref: tuple) -> float:
    """Largest over (value, gradient, Hessian) of max|a - b| / max|b|."""
    worst = 0.0
    for a, b in zip(out, ref, strict=True):
        a = np.asarray(a, dtype=np.float64).reshape(b.shape)
        scale = max(float(np.max(np.abs(b))), 1e-300)
        worst = max(worst, float(np.max(np.abs(a - b))) / scale)
    return worst


def timed(fn: Fn, x: Any, number: int = 1) -> float:
    """Seconds per call of ``fn(x)`` (``number`` calls in a row, garbage collector off).

    (No ``gc.collect()`` here: with TensorFlow, torch and JAX loaded one takes ~0.1 s; the
    round-robin loop collects once per round instead.)
    """
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn(x)
        return (time.perf_counter() - start) / number
    finally:
        gc.enable()


@dataclass
class Row:
    system: str
    peer: bool
    status: str = "ok"
    seconds: float | None = None
    samples: int = 0  # samples actually timed (the time is scaled to the batch when fewer)
    error: float | None = None
    flops: float | None = None  # multiply-adds per sample (hessarray)
    note: str = ""
    threads: int | None = None  # None: the library's own default
    times: list = field(default_factory=list)
    repeats: int = 0


@dataclass
class Settings:
    repeats: int = 5  # rounds for calls under a second (3 for slower ones)
    max_repeats: int = 15  # fast calls get more rounds, up to this (one round's time spreads ±30 % here)
    budget_s: float = 6.0  # timing time per system and case
    max_call_s: float = 2.0  # a call estimated slower than this is timed on fewer samples, scaled
    min_measure_s: float = 0.02  # faster calls are looped
    probe: int = 32  # samples of the first try of a system that is not compiled per shape
    # Each timed measurement under this long follows one untimed call of the same system: after
    # another system (a long single-threaded one, or one whose pool sleeps), the cores and pools
    # start cold, and the first call after them ran up to 1.2× slower in earlier runs (the row
    # timed after hessQuik: PINN-like float64, auto 34.6 ms against forward 28.2 ms, the same
    # algorithm). A pause instead made every system slower (25 → 43 ms).
    warm_below_s: float = 0.5


def pick_threads(built: Built, xin: Any) -> tuple[int | None, float]:
    """The faster thread count for ``built`` (None: it has no pool to resize), and an
    estimate of its time per call on ``xin``.

    A system with a pool is tried on an eighth of the samples (a slow pool can be many times
    slower: no need to wait for it on the whole batch); one thread is kept unless the default
    pool is faster. One without is timed once on the whole batch.
    """
    n = xin.shape[0]
    if not built.knob or NCORES == 1:
        # On the whole batch: a system compiled per input shape (JAX, TensorFlow) would
        # compile again for a part of it (a second or more here, per case).
        return None, timed(built.fn, xin)
    # hessarray's pool works on blocks of samples (up to 2048 each): keep enough of them to
    # have several blocks, or the probe finds no use for a second thread.
    least = 16384 if built.knob == "hessarray" else 64
    xs = xin[: max(n // 8, min(n, least))]
    scale = n / xs.shape[0]
    THREADS.apply(built.knob, 1)
    t_one = min(timed(built.fn, xs) for _ in range(2))
    THREADS.apply(built.knob, NCORES)
    t = timed(built.fn, xs)  # warms the pool; a much slower pool is not tried again
    if t < 1.5 * t_one:
        t = min(t, timed(built.fn, xs))
    THREADS.apply(built.knob, 1)
    return (NCORES, t * scale) if t < t_one else (1, t_one * scale)


def compare(
    spec: Spec,
    batch: int,
    dtype: Any,
    systems: list[System],
    st: Settings,
    rtol: float,
    seed: int = 1,
    log: Callable[[str], None] = print,
) -> list[Row]:
    """Check every system against hessarray, then time them round-robin; one row each."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, spec.d)).astype(dtype)
    THREADS.apply("hessarray", NCORES)
    ref = _np_out(tuple(ha.derivatives(ha_model(spec, np.float64), x.astype(np.float64))))
    rows: list[Row] = []
    live: list[tuple[Row, Built, Any, int]] = []
    for system in systems:
        row = Row(system.name, system.peer)
        rows.append(row)
        if system.missing:
            row.status = system.missing
            continue
        t_ready = time.perf_counter()
        try:
            built = system.build(spec, dtype)
            row.flops, row.note = built.flops, built.note
            n, out, t = batch, None, None
            if not system.jit:
                # Small probes first: some systems are far too slow (or big) for the batch. A
                # probe overestimates calls with fixed costs, so 2 samples decide only when
                # the estimate is enormous, 32 when it is over twice the limit.
                THREADS.apply(built.knob, 1)
                for p, trust in ((2, 20), (st.probe, 2)):
                    if p >= batch:
                        break
                    xp_ = built.to_input(x[:p])
                    first = built.fn(xp_)
                    t_p = timed(built.fn, xp_)
                    est = t_p * batch / p
                    if est > trust * st.max_call_s:
                        n = max(p, int(batch * st.max_call_s / est))
                        if n == p:  # the probe is the measurement
                            out, t = built.to_numpy(first), t_p
                        break
            xin = built.to_input(x[:n])
            THREADS.apply(built.knob, 1)
            if out is None:
                t_warm = time.perf_counter()
                out = built.to_numpy(built.fn(xin))  # warm-up (and compilation)
                t_warm = time.perf_counter() - t_warm
                if not system.jit and t_warm > st.max_call_s:
                    t = t_warm
            row.error = rel_error(out, tuple(r[:n] for r in ref))
            if not row.error <= rtol:
                row.status = "MISMATCH"
                log(f"  {system.name}: MISMATCH, relative error {row.error:.2e} > {rtol:g}")
                continue
            if t is not None:  # slow: one thread, no more tries
                row.threads = 1 if built.knob else None
            else:
                row.threads, t = pick_threads(built, xin)
            number = max(1, math.ceil(st.min_measure_s / max(t, 1e-9)))
            base = st.repeats if t < 1 else 3
            row.repeats = int(min(st.max_repeats, max(base, st.budget_s // max(t * number, 1e-9))))
            if n < batch:
                row.note = (row.note + "; " if row.note else "") + f"timed on {n} samples, scaled"
            row.samples = n
            live.append((row, built, xin, number, t * number < st.warm_below_s))
            log(
                f"  {system.name}: checked and warmed up in {time.perf_counter() - t_ready:.1f} s "
                f"(timing {row.repeats} rounds of {number} × ~{fmt_s(t)})"
            )
        except Exception as exc:  # a peer failing must not stop the comparison
            msg = str(exc).splitlines()[0][:160] if str(exc) else ""
            row.status = f"error: {type(exc).__name__}: {msg}"
            log(f"  {system.name}: {row.status}")
    rounds = max((r.repeats for r, *_ in live), default=0)
    for k in range(rounds):
        gc.collect()
        # Each round starts with a different system: the first call after the previous round
        # (and after the collection) finds colder caches and memory, which cost the system
        # timed first up to 40 % in earlier runs (PINN-like: auto 82 ms, forward 58 ms, same
        # algorithm). Rotating spreads that over every system; medians drop it.
        shift = k % len(live)
        for row, built, xin, number, warm in live[shift:] + live[:shift]:
            if k < row.repeats:
                THREADS.apply(built.knob, row.threads or 1)
                if warm:  # untimed: wakes the cores and this system's pools after the previous one
                    built.fn(xin)
                row.times.append(timed(built.fn, xin, number) * batch / row.samples)
    for row, *_ in live:
        row.seconds = statistics.median(row.times)
    THREADS.restore()
    return rows


def fastest_peer(rows: list[Row]) -> Row | None:
    peers = [r for r in rows if r.peer and r.seconds is not None]
    return min(peers, key=lambda r: r.seconds) if peers else None


# --------------------------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            parts.append(
                f"{info.get('internal_api')} {info.get('version')}, kernel {info.get('architecture')}, "
                f"{Path(info.get('filepath', '')).name}"
            )
    return "; ".join(parts) or "no BLAS found"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "hessarray": ha.__version__}
    for dist in (
        "numpy",
        "array-api-compat",
        "numba",
        "torch",
        "jax",
        "jaxlib",
        "tensorflow",
        "hessQuik",
        "threadpoolctl",
    ):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    out["hessarray compiled executor (numba)"] = "on" if any(compiled_flags().values()) else "off"
    return out


def matmul_rate(n: int, dtype: Any, threads: int, repeats: int = 5) -> float:
    """Median FLOP/s of an ``n × n`` NumPy matrix product (2 n³ FLOPs) on ``threads`` threads."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    THREADS.apply("hessarray", threads)  # sets NumPy's BLAS to ``threads``
    np.matmul(a, b)
    rate = 2 * n**3 / statistics.median(timed(lambda _: np.matmul(a, b), None) for _ in range(repeats))
    THREADS.restore()
    return rate


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


class Report:
    def __init__(self) -> None:
        self.md: list[str] = []
        self.goals: list[list[str]] = []  # [target, measured, verdict] for the summary
        self.summary_at = 0  # where the summary goes in the markdown

    def goal(self, what: str, measured: str, met: bool | None) -> None:
        self.goals.append([what, measured, "—" if met is None else ("met" if met else "**missed**")])

    def summary(self) -> list[str]:
        lines = ["## Summary of the targets", ""]
        lines += ["| target | measured | verdict |", "|---|---|---|"]
        lines += ["| " + " | ".join(g) + " |" for g in self.goals]
        return lines + [""]

    def out(self, text: str = "") -> None:
        print(text, flush=True)
        self.md.append(text)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.out("| " + " | ".join(header) + " |")
        self.out("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            self.out("| " + " | ".join(r) + " |")
        self.out()


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def case_table(rep: Report, rows: list[Row], batch: int, rates: dict, dtype: Any) -> None:
    best = fastest_peer(rows)
    body = []
    for r in rows:
        threads = "1" if r.threads == 1 else "default"
        if r.seconds is None:
            body.append([r.system, r.status, "", "", "", "", "", "", r.note])
            continue
        ratio = f"{best.seconds / r.seconds:.2f}×" if best else "—"
        flops = gflops = frac = ""
        if r.flops is not None:
            total = 2 * r.flops * batch
            rate = rates[(np.dtype(dtype).name, r.threads or NCORES)]
            flops = f"{total / 1e9:.3g} G"
            gflops = f"{total / r.seconds / 1e9:.2f}"
            frac = f"{total / r.seconds / rate:.1%}"
        err = f"{r.error:.1e}" if r.error is not None else ""
        body.append([r.system, fmt_s(r.seconds), ratio, threads, flops, gflops, frac, err, r.note])
    rep.table(
        [
            "system",
            "median",
            "fastest peer / this",
            "threads",
            "FLOPs",
            "GFLOP/s",
            "of matmul rate",
            "rel. error",
            "note",
        ],
        body,
    )


HA_MAIN = "hessarray numpy (auto)"


def speedup(rows: list[Row], name: str = HA_MAIN) -> tuple[float | None, Row | None]:
    row = next((r for r in rows if r.system == name), None)
    best = fastest_peer(rows)
    if row is None or row.seconds is None or best is None:
        return None, best
    return best.seconds / row.seconds, best


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------

FULL_CASES = [  # key, label, d, width, batch, target speed-up over the fastest peer
    ("pinn", "PINN-like", 2, 64, 10_000, 2.0),
    ("mid", "mid", 10, 256, 2_000, 1.5),
    ("wide", "wide input", 50, 64, 1_000, 1.0),
]
QUICK_CASES = [
    ("pinn", "PINN-like", 2, 8, 200, 2.0),
    ("mid", "mid", 4, 16, 100, 1.5),
    ("wide", "wide input", 12, 8, 50, 1.0),
]


def main_cases(rep: Report, cfg: argparse.Namespace, systems: list[System], st: Settings) -> dict:
    cases = QUICK_CASES if cfg.quick else FULL_CASES
    targets, kept = [], {}
    rep.out("## Input Hessian, gradient and value of a tanh MLP")
    rep.out()
    rep.out(
        "Model: dense d→w, tanh, 3 × (dense w→w, tanh), dense w→1, Sum; the same random weights in every "
        "system. *fastest peer / this* > 1 means faster than the fastest non-hessarray system. *FLOPs*: "
        "those of the algorithm hessarray's plan runs (2 × its multiply-add estimate × batch); *of matmul "
        "rate*: achieved GFLOP/s over this machine's large NumPy matrix-product rate (same dtype and "
        "thread count, measured in the same run)."
    )
    rep.out()
    for key, label, d, w, batch, need in cases:
        if key not in cfg.cases:
            continue
        spec = mlp_spec(d, w)
        for dtype in cfg.dtypes:
            name = np.dtype(dtype).name
            rtol = 1e-10 if dtype == np.float64 else 1e-3
            rep.out(f"### {label}: d={d}, width {w}, batch {batch}, {name}")
            rep.out()
            t0 = time.perf_counter()
            rows = compare(spec, batch, dtype, systems, st, rtol)
            print(f"  [{label}, {name}: {time.perf_counter() - t0:.0f} s]", flush=True)
            case_table(rep, rows, batch, cfg.rates, dtype)
            s, best = speedup(rows)
            best_ha = max((speedup(rows, r.system)[0] or 0, r.system) for r in rows if not r.peer)
            targets.append(
                [
                    f"{label} (d={d}, w={w}, B={batch}), {name}",
                    f"≥ {need:g}×",
                    f"{s:.2f}× (vs {best.system})" if s else "not measured",
                    f"{best_ha[0]:.2f}× ({best_ha[1]})" if best_ha[0] else "—",
                    ("met" if s >= need else "missed") if s else "—",
                ]
            )
            floor = gemm_floor(spec, batch, dtype)
            need_s = best.seconds / need if best else None
            rep.out(
                f"GEMM floor: the {floor['flops'] / 1e9:.3g} GFLOP of hessarray's {floor['mode']} mode at the "
                f"rate of its own GEMM shape, ({floor['rows']}×{w}) @ ({w}×{w}), {floor['rate'] / 1e9:.1f} GFLOP/s "
                f"on one thread, times {NCORES} cores with perfect scaling: {fmt_s(floor['seconds'])}"
                + (f"; the target needs ≤ {fmt_s(need_s)} for the whole call." if need_s else ".")
            )
            rep.out()
            targets[-1].insert(4, f"{fmt_s(floor['seconds'])} / {fmt_s(need_s)}" if need_s else "—")
            main = next((r for r in rows if r.system == HA_MAIN and r.seconds is not None), None)
            if key == "mid" and main is not None and main.flops is not None:
                # The FLOP-rate line, on the case with the highest arithmetic intensity.
                rate = cfg.rates[(name, main.threads or NCORES)]
                achieved = 2 * main.flops * batch / main.seconds
                ceiling = floor["rate"] / cfg.rates[(name, 1)]
                rep.goal(
                    f"{label} ({name}): FLOP rate of hessarray's chosen algorithm ≥ 50 % of the matmul rate",
                    f"{achieved / rate:.1%} of {rate / 1e9:.0f} GFLOP/s (its own GEMM shape alone reaches "
                    f"{ceiling:.0%} of the large-matmul rate on one thread)",
                    achieved >= 0.5 * rate,
                )
            kept[(key, name)] = rows
            rep.goal(
                f"{label} (d={d}, w={w}, B={batch}, {name}): hessarray numpy ≥ {need:g}× the fastest peer",
                f"{s:.2f}× (fastest peer: {best.system})" if s else "not measured",
                s >= need if s else None,
            )
    if targets:
        rep.out('### Targets: hessarray on NumPy (`mode="auto"`) against the fastest peer')
        rep.out()
        rep.table(
            ["case", "target", "hessarray numpy (auto)", "best hessarray row", "GEMM floor / target time", "verdict"],
            targets,
        )
        rep.out(
            "*GEMM floor*: a lower bound on the time of hessarray's algorithm with this BLAS: its matrix "
            "products alone, at the rate NumPy reaches here for their shape (timed in this run), on all "
            "cores with perfect scaling, and no time for anything else (tanh, the elementwise passes, "
            "the curvature products). Where it exceeds the target time, the target is out of reach for "
            "this algorithm on this machine."
        )
        rep.out()
    return kept


def gemm_floor(spec: Spec, batch: int, dtype: Any, repeats: int = 20) -> dict:
    """Time of the plan's FLOPs at the best one-thread rate of its own layer GEMMs, on all cores.

    Per dense layer and block the forward mode multiplies ``chunk`` value rows, ``chunk · k``
    tangent rows and ``chunk`` adjoint rows by a ``w × w`` matrix (the compiled executor: its
    ``plan.tile`` rows instead of ``chunk``); the fastest of those row counts, and of all of them
    stacked, gives the rate (the reverse mode: ``chunk · w`` rows).
    """
    model = ha_model(spec, dtype)
    plan = ha.plan(model, np.zeros((batch, spec.d), dtype=dtype))
    w, c = spec.width, plan.tile or plan.chunk_size  # a compiled executor multiplies per tile
    shapes = [c, c * spec.d, c * (2 + spec.d)] if plan.mode == "forward" else [c * w, c * (2 + w)]
    rng = np.random.default_rng(0)
    b = rng.standard_normal((w, w)).astype(dtype)
    best = (0.0, 0)
    THREADS.apply("hessarray", 1)
    for rows in sorted(set(shapes)):
        a = rng.standard_normal((rows, w)).astype(dtype)
        np.matmul(a, b.T)
        seconds = statistics.median(timed(lambda _, a=a: np.matmul(a, b.T), None) for _ in range(repeats))
        best = max(best, (2 * rows * w * w / seconds, rows))
    THREADS.restore()
    rate, rows = best
    flops = 2 * plan.flops[plan.mode] * batch
    return {"flops": flops, "mode": plan.mode, "rows": rows, "rate": rate, "seconds": flops / (rate * NCORES)}


def hessquik_cases(rep: Report, cfg: argparse.Namespace, systems: list[System], st: Settings) -> None:
    rep.out("## hessQuik's setting: residual network of width 16, batch 10")
    rep.out()
    rep.out(
        "Model: dense d→16, activation (log cosh, or tanh), 4 × residual block x + 0.5·tanh(W x + b), "
        "dense 16→1 (+Sum), as in hessQuik's `utils.timing.setup_resnet`. hessQuik's log-cosh "
        "(`antiTanhActivation`) is log(2 cosh z); its biases downstream are shifted so that it computes "
        "exactly the same function."
    )
    rep.out()
    wanted = (
        "hessarray numpy (auto)",
        "hessarray torch (auto)",
        "hessarray jax.jit (auto)",
        "JAX jit(vmap(hessian))",
        "TensorFlow tf.function+XLA",
        "torch.func vmap(hessian)",
        "hessQuik forward",
        "hessQuik backward",
    )
    chosen = [s for s in systems if s.name in wanted]
    summary = []
    batch = 10
    settings = [(first, d) for first in ("logcosh", "tanh") for d in (2, 64)]
    if cfg.quick:
        settings = [("logcosh", 2)]
    for first, d in settings:
        spec = resnet_spec(d, first)
        for dtype in cfg.dtypes:
            name = np.dtype(dtype).name
            rtol = 1e-10 if dtype == np.float64 else 1e-3
            rep.out(f"### d={d}, first activation {first}, {name}")
            rep.out()
            rows = compare(spec, batch, dtype, chosen, st, rtol)
            case_table(rep, rows, batch, cfg.rates, dtype)
            ha_row = next(r for r in rows if r.system == HA_MAIN)
            if ha_row.seconds is None:
                continue
            hq = [r for r in rows if r.system.startswith("hessQuik") and r.seconds is not None]
            jx = next((r for r in rows if r.system.startswith("JAX") and r.seconds is not None), None)
            hq_best = min(hq, key=lambda r: r.seconds) if hq else None
            vs_hq = hq_best.seconds / ha_row.seconds if hq_best else None
            summary.append(
                [
                    f"d={d}, {first}, {name}",
                    fmt_s(ha_row.seconds),
                    f"{vs_hq:.1f}× (vs {hq_best.system})" if hq_best else "hessQuik not run",
                    f"{jx.seconds / ha_row.seconds:.2f}×" if jx else "—",
                    "≥ 5×",
                    ("met" if vs_hq >= 5 else "missed") if vs_hq is not None else "—",
                ]
            )
            rep.goal(
                f"hessQuik's setting (d={d}, {first}, B=10, {name}): hessarray numpy ≥ 5× hessQuik's faster mode",
                (f"{vs_hq:.1f}×" if vs_hq else "hessQuik not run")
                + (f"; JAX / hessarray {jx.seconds / ha_row.seconds:.2f}×" if jx else ""),
                vs_hq >= 5 if vs_hq else None,
            )
    if summary:
        rep.out("### Targets: hessarray on NumPy against hessQuik's faster mode (and JAX)")
        rep.out()
        rep.table(["case", "hessarray", "hessQuik / hessarray", "JAX / hessarray", "target", "verdict"], summary)


def mode_grid(rep: Report, cfg: argparse.Namespace) -> None:
    ds = (1, 2, 5, 10, 20, 50, 100) if not cfg.quick else (1, 12)
    widths = (16, 64, 256) if not cfg.quick else (8,)
    target = 0.025 if not cfg.quick else 0.004
    rounds = 7 if not cfg.quick else 3
    rep.out('## `mode="auto"` against the better of forward and reverse')
    rep.out()
    rep.out(
        "Same MLP (depth 4), float64, NumPy, one thread (hessarray's block workers and BLAS: the "
        f"steadiest timings here). The batch is chosen so that an `auto` call takes about {target * 1e3:.0f} ms; "
        f"medians of {rounds} interleaved rounds (2 for a mode slower than 0.3 s), each timed call after an "
        "untimed one of the same mode. *auto / best* = "
        "time(auto) / min(time(forward), time(reverse)), as measured; since `auto` runs exactly the mode it "
        "picks, its difference from that mode's own time is timing noise, so the verdict (target ≤ 1.10) "
        "uses *picked / best* = time(the mode auto picks) / min(time(forward), time(reverse)), which is 1 "
        "whenever auto picks the faster mode. *FLOPs fwd / rev* is the plan's estimate that auto compares."
    )
    rep.out()
    THREADS.apply("hessarray", 1)
    body, worst, worst_measured = [], 0.0, 0.0
    rng = np.random.default_rng(2)
    for w in widths:
        for d in ds:
            model = ha_model(mlp_spec(d, w), np.float64)
            batch = 32
            for _ in range(4):  # calibrate the batch size on the auto call
                x = rng.standard_normal((batch, d))
                ha.derivatives(model, x)
                t = min(timed(lambda x, model=model: ha.derivatives(model, x), x) for _ in range(3))
                new = int(min(50_000, max(16, batch * target / t)))
                if 0.7 < new / batch < 1.4:
                    break
                batch = new
            x = rng.standard_normal((batch, d))
            fns = {m: partial(ha.derivatives, model, mode=m) for m in ("auto", "forward", "reverse")}
            first = {m: timed(f, x) for m, f in fns.items()}
            times: dict[str, list[float]] = {m: [] for m in fns}
            for k in range(rounds):
                gc.collect()
                for m, f in fns.items():
                    if k < 2 or first[m] < 0.3:  # a clearly slower mode needs fewer rounds
                        if first[m] < 0.3:  # untimed, as in the comparison (Settings.warm_below_s)
                            f(x)
                        times[m].append(timed(f, x))
            med = {m: statistics.median(v) for m, v in times.items()}
            plan = ha.plan(model, x)
            best = min(med["forward"], med["reverse"])
            faster = "forward" if med["forward"] <= med["reverse"] else "reverse"
            measured, picked = med["auto"] / best, med[plan.mode] / best
            worst, worst_measured = max(worst, picked), max(worst_measured, measured)
            body.append(
                [
                    str(d),
                    str(w),
                    str(batch),
                    f"{plan.flops['forward'] / plan.flops['reverse']:.2g}",
                    plan.mode,
                    faster,
                    fmt_s(med["auto"]),
                    fmt_s(med["forward"]),
                    fmt_s(med["reverse"]),
                    f"{measured:.2f}",
                    f"{picked:.2f}",
                    "ok" if picked <= 1.10 else "**missed**",
                ]
            )
            print(f"  d={d} w={w} B={batch}: auto picks {plan.mode}, {faster} is faster, {picked:.2f}", flush=True)
    rep.table(
        [
            "d",
            "width",
            "batch",
            "FLOPs fwd / rev",
            "auto picks",
            "faster",
            "auto",
            "forward",
            "reverse",
            "auto / best",
            "picked / best",
            "≤ 1.10",
        ],
        body,
    )
    rep.out(
        f"Worst picked / best: **{worst:.2f}** (target ≤ 1.10: {'met' if worst <= 1.10 else 'missed'}); "
        f"worst measured auto / best: {worst_measured:.2f}."
    )
    rep.goal(
        f'mode="auto": time of the mode it picks / the faster mode ≤ 1.10, over {len(body)} (d, width)',
        f"worst {worst:.2f} (auto / best as measured: worst {worst_measured:.2f})",
        worst <= 1.10,
    )
    rep.out()
    THREADS.restore()


def memory(rep: Report, cfg: argparse.Namespace) -> None:
    cases = [(label, mlp_spec(d, w), b) for _, label, d, w, b, _ in (QUICK_CASES if cfg.quick else FULL_CASES)]
    cases += [("hessQuik setting", resnet_spec(8 if cfg.quick else 64, "logcosh"), 10)]
    rep.out("## Peak memory of the end-to-end call (NumPy, float64, tracemalloc)")
    rep.out()
    rep.out(
        "Peak of NumPy allocations during `ha.derivatives(model, x, mode=...)` (tracemalloc traces "
        "NumPy's buffers; BLAS scratch space is not counted) above what was allocated before the "
        "call, against the bytes of the returned value + gradient + Hessian. A mode is skipped where it "
        "would take too long."
    )
    rep.out()
    THREADS.restore()
    body = []
    rng = np.random.default_rng(3)
    for label, spec, batch in cases:
        model = ha_model(spec, np.float64)
        x = rng.standard_normal((batch, spec.d))
        for mode in ("auto", "forward", "reverse") if not cfg.quick else ("auto",):
            plan = ha.plan(model, x, mode=mode)
            if mode != "auto" and plan.flops[plan.mode] * batch > 3e9:
                continue
            gc.collect()
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                out = ha.derivatives(model, x, mode=mode)
                peak = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            size = sum(a.nbytes for a in out)
            body.append(
                [
                    f"{label}: d={spec.d}, w={spec.width}, B={batch}",
                    mode,
                    plan.mode,
                    str(plan.chunk_size),
                    f"{size / 2**20:.3g} MiB",
                    f"{peak / 2**20:.3g} MiB",
                    f"{peak / size:.1f}",
                ]
            )
            del out
    rep.table(["case", "mode", "runs", "block", "outputs", "peak", "peak / outputs"], body)


def batch_plot(rep: Report, cfg: argparse.Namespace, systems: list[System], kept: dict) -> None:
    key, label, d, w, big, _ = (QUICK_CASES if cfg.quick else FULL_CASES)[0]
    sizes = [10, 100, 1000, big] if not cfg.quick else [10, big]
    spec = mlp_spec(d, w)
    plotted = [s for s in systems if s.name not in ("hessarray numpy (forward)", "hessarray numpy (reverse)")]
    results: dict[str, dict[int, float]] = {s.name: {} for s in plotted}
    st = Settings(repeats=3, max_repeats=5, budget_s=1.0, max_call_s=3.0, probe=16)
    for batch in sizes:
        rows = kept.get((key, "float64")) if batch == big else None
        if rows is None:
            print(f"  batch {batch} ...", flush=True)
            rows = compare(spec, batch, np.float64, plotted, st, 1e-10)
        for r in rows:
            if r.seconds is not None and r.system in results:
                results[r.system][batch] = r.seconds
    rep.out(f"## Time against batch size ({label}: d={d}, width {w}, float64)")
    rep.out()
    names = [n for n, v in results.items() if v]
    rep.table(["system"] + [f"B={b}" for b in sizes], [[n] + [fmt_s(results[n].get(b)) for b in sizes] for n in names])
    if not cfg.write:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        rep.out("(matplotlib is not installed: no plot)")
        return
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for n in names:
        bs = sorted(results[n])
        mine = n.startswith("hessarray")
        ax.loglog(bs, [results[n][b] for b in bs], "-o" if mine else "--s", label=n, lw=2.2 if mine else 1.2, ms=4)
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("seconds per call (value, gradient and Hessian)")
    ax.set_title(f"{label}: tanh MLP, d={d}, width {w}, depth 4, float64")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(cfg.plot, dpi=110)
    plt.close(fig)
    rep.out(f"![time against batch size]({Path(cfg.plot).name})")
    rep.out()


# -- activation grid ---------------------------------------------------------------------------

#: Settings of the activation grid: label, d, width, batch, target speed-up over the fastest
#: peer (those of :data:`FULL_CASES`); the small batches run at the first (PINN-like) one.
ACT_SETTINGS = [
    ("PINN-like", 2, 64, 10_000, 2.0),
    ("mid", 10, 256, 2_000, 1.5),
    ("wide", 50, 64, 1_000, 1.0),
]
ACT_SETTINGS_QUICK = [("PINN-like", 2, 8, 200, 2.0)]
#: Small batches of the PINN-like setting, against JAX ``jit`` (target: at least its speed).
SMALL_BATCHES = (10, 100)
SMALL_BATCHES_QUICK = (10,)
#: Hidden activations of both networks: the MLP's depth; the residual network's first layer
#: and its ``ACT_DEPTH - 1`` blocks.
ACT_DEPTH = 4
ARCHS = ("MLP", "ResNet")
JAX_PEER = "JAX jit(vmap(hessian))"
#: The peers of the grid: its fastest peer is the faster of these that are installed.
GRID_PEERS = ("TensorFlow tf.function+XLA", JAX_PEER)
SHORT = {"TensorFlow tf.function+XLA": "TF+XLA", JAX_PEER: "JAX"}


def act_spec(arch: str, act: str, d: int, width: int, seed: int = 0) -> Spec:
    """The grid's network: ``arch`` ``"MLP"`` (:func:`mlp_spec`, depth :data:`ACT_DEPTH`) or
    ``"ResNet"``: ``dense d→w, act, (ACT_DEPTH - 1) × Residual(dense w→w, act, h=0.5), dense w→1``."""
    if arch == "MLP":
        return mlp_spec(d, width, depth=ACT_DEPTH, seed=seed, act=act)
    return resnet_spec(d, act, width=width, depth=ACT_DEPTH - 1, h=0.5, seed=seed, act=act)


@dataclass
class Cell:
    """One case of the activation grid."""

    ha: float | None = None  # hessarray numpy (auto), median seconds
    peer: float | None = None  # the fastest peer's median seconds
    peer_name: str = ""
    executor: str = ""  # ha.plan(model, x).executor
    status: str = ""  # why a time is missing

    @property
    def ratio(self) -> float | None:
        return self.peer / self.ha if self.ha and self.peer else None

    def text(self) -> str:
        if self.ratio is None:
            return self.status or "—"
        ratio = f"{self.ratio:.2f}×"
        if self.ratio < 1:
            ratio = f"**{ratio}**"
        peer = "" if self.peer_name == "JAX" else f" {self.peer_name}"
        return f"{fmt_s(self.ha)} / {fmt_s(self.peer)}{peer} = {ratio} ({self.executor})"


def activation_grid(rep: Report, cfg: argparse.Namespace, systems: list[System], st: Settings) -> list[str]:
    """hessarray on NumPy against the fastest peer for every activation of :data:`ACTIVATIONS`,
    as an MLP and a residual network, at the PINN-like, mid and wide settings and at small
    batches; returns the marked section ``activations`` of ``docs/benchmarks.md`` (its lines)."""
    settings = ACT_SETTINGS_QUICK if cfg.quick else ACT_SETTINGS
    # Fewer, shorter rounds than the main cases: 100 cases in about ten minutes.
    if cfg.quick:
        gst = Settings(repeats=1, max_repeats=2, budget_s=0.05, max_call_s=1.0, probe=16)
    else:
        gst = Settings(repeats=5, max_repeats=7, budget_s=1.0, max_call_s=2.0, warm_below_s=0.1)
    mine = [s for s in systems if s.name == HA_MAIN]
    peers = [s for s in systems if s.name in GRID_PEERS]
    label0, d0, w0, _, _ = settings[0]
    columns = [(label, d, w, batch, need, peers, "the fastest peer") for label, d, w, batch, need in settings]
    small = [s for s in peers if s.name == JAX_PEER]
    batches = SMALL_BATCHES_QUICK if cfg.quick else SMALL_BATCHES
    columns += [(f"{label0} B={b}", d0, w0, b, 1.0, small, "JAX jit") for b in batches]
    heads = [f"{label} (d={d}, w={w}, B={batch})" for label, d, w, batch, *_ in columns]
    begin, end = markers("activations")
    sec = Report()
    sec.out(begin)
    sec.out("## Every activation: MLPs and residual networks")
    sec.out()
    sec.out(
        f"Generated by `asv_bench/compare.py` on {time.strftime('%Y-%m-%d %H:%M')} ({cpu_model()}, {NCORES} "
        "cores, load average before the section "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}), from the repository root:"
    )
    sec.out()
    sec.out("```bash")
    flags = ["--cases activations --write"] + (["--quick"] if cfg.quick else [])
    flags += ["--portable"] if cfg.portable else []
    if list(cfg.activations) != list(ACTIVATIONS):
        flags.append("--activations " + " ".join(cfg.activations))
    flags.append("--dtypes " + " ".join(np.dtype(t).name for t in cfg.dtypes))
    flags += ["--systems " + " ".join(shlex.quote(k) for k in cfg.systems)] if cfg.systems else []
    sec.out("env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/compare.py " + " ".join(flags))
    sec.out("```")
    sec.out()
    sec.out(
        "Value, gradient and Hessian of every sample (`ha.derivatives`, as in the main cases) of two "
        f"networks with {ACT_DEPTH} hidden activations each: the MLP dense d→w, act, "
        f"{ACT_DEPTH - 1} × (dense w→w, act), dense w→1, and the residual network (ResNet) dense d→w, act, "
        f"{ACT_DEPTH - 1} × Residual(dense w→w, act, h=0.5), dense w→1; the same random weights in "
        'every system. Each cell: hessarray on NumPy (`mode="auto"`) / the fastest peer (the faster '
        "of TensorFlow+XLA and JAX `jit(vmap(hessian))` that are installed; JAX unless named) = peer "
        "time ÷ hessarray time (above 1: hessarray is faster; bold: slower), and in brackets the "
        "executor that ran (`ha.plan(model, x).executor`). The B=10 and B=100 columns are against "
        "JAX `jit` alone. Medians of round-robin rounds in one run, each system checked against "
        "hessarray first (as in the main cases)."
        + (" NumPy's compiled executor was switched off (`--portable`)." if cfg.portable else "")
    )
    sec.out()
    quiet = lambda msg: print(msg, flush=True) if ("MISMATCH" in msg or "error" in msg) else None  # noqa: E731
    cells: dict[tuple[str, str, str, str], Cell] = {}
    for dtype in cfg.dtypes:
        name = np.dtype(dtype).name
        rtol = 1e-10 if dtype == np.float64 else 1e-3
        for arch in ARCHS:
            for act in cfg.activations:
                for (label, d, w, batch, _, chosen, _), head in zip(columns, heads, strict=True):
                    spec = act_spec(arch, act, d, w)
                    t0 = time.perf_counter()
                    rows = compare(spec, batch, dtype, mine + chosen, gst, rtol, log=quiet)
                    if "jax" in sys.modules:  # a hundred compiled functions slow every gc.collect down
                        sys.modules["jax"].clear_caches()
                    cell = cells[(name, arch, act, head)] = Cell()
                    main = rows[0]
                    best = fastest_peer(rows)
                    cell.ha, cell.peer = main.seconds, best.seconds if best else None
                    cell.peer_name = SHORT.get(best.system, best.system) if best else ""
                    if main.seconds is None:
                        cell.status = f"hessarray: {main.status}"
                    elif best is None:
                        cell.status = "; ".join(f"{SHORT.get(r.system, r.system)}: {r.status}" for r in rows[1:])
                        cell.status = cell.status or "no peer"
                    THREADS.apply("hessarray", main.threads or NCORES)
                    model = ha_model(spec, dtype)
                    cell.executor = ha.plan(model, np.zeros((batch, d), dtype=dtype)).executor
                    THREADS.restore()
                    print(
                        f"  {name} {arch} {act} {label} (B={batch}): {cell.text()} [{time.perf_counter() - t0:.1f} s]",
                        flush=True,
                    )
        sec.out(f"### {name}")
        sec.out()
        sec.table(
            ["activation", "network", *heads],
            [
                [act, arch, *(cells[(name, arch, act, h)].text() for h in heads)]
                for arch in ARCHS
                for act in cfg.activations
            ],
        )
    # Targets: every activation and network at the main cases' targets; and how much the
    # activation's name changes hessarray's own time (the slowest activation over tanh).
    body = []
    for dtype in cfg.dtypes:
        name = np.dtype(dtype).name
        for (*_, need, _, versus), head in zip(columns, heads, strict=True):
            got = [(c.ratio, act, arch) for (n, arch, act, h), c in cells.items() if n == name and h == head]
            measured = [g for g in got if g[0] is not None]
            worst = min(measured) if measured else None
            spread = []
            for arch in ARCHS:
                base = cells[(name, arch, "tanh", head)].ha if "tanh" in cfg.activations else None
                times = [cells[(name, arch, a, head)].ha for a in cfg.activations]
                if base and all(times):
                    spread.append(max(times) / base)
            ok = (all(g[0] >= need for g in measured) and len(measured) == len(got)) if measured else None
            body.append(
                [
                    f"{head}, {name}",
                    f"≥ {need:g}× {versus}",
                    f"{worst[0]:.2f}× ({worst[1]}, {worst[2]})" if worst else "not measured",
                    f"{sum(g[0] >= need for g in measured)} / {len(got)}",
                    f"{max(spread):.2f}" if spread else "—",
                    "—" if ok is None else ("met" if ok else "**missed**"),
                ]
            )
            rep.goal(
                f"activation grid, {head}, {name}: hessarray numpy ≥ {need:g}× {versus} for every activation "
                "and network",
                f"worst {worst[0]:.2f}× ({worst[1]}, {worst[2]})" if worst else "not measured",
                ok,
            )
    sec.out("### Targets")
    sec.out()
    sec.table(
        [
            "setting",
            "target",
            "worst (activation, network)",
            "cells meeting it",
            "slowest activation / tanh",
            "verdict",
        ],
        body,
    )
    sec.out(
        "*slowest activation / tanh*: hessarray's time for its slowest activation over its time for tanh, "
        "same network, setting and dtype (worse of the two networks): 1.00 when the speed does not "
        "depend on the activation."
    )
    sec.out()
    if cfg.write and activation_plot(cfg, cells, heads):
        sec.out(f"![speed-up over the fastest peer per activation]({Path(cfg.act_plot).name})")
        sec.out()
    sec.out(end)
    return sec.md


def activation_plot(cfg: argparse.Namespace, cells: dict, heads: list[str]) -> bool:
    """Speed-up bars (fastest peer ÷ hessarray) per activation, grouped by setting, one panel per
    dtype and network, into ``cfg.act_plot``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return False
    names = [np.dtype(t).name for t in cfg.dtypes]
    fig, axes = plt.subplots(
        len(names), len(ARCHS), figsize=(6.5 * len(ARCHS), 3.8 * len(names)), squeeze=False, sharey=True
    )
    colours = plt.get_cmap("tab10").colors
    acts = list(cfg.activations)
    width = 0.8 / len(acts)
    for i, name in enumerate(names):
        for j, arch in enumerate(ARCHS):
            ax = axes[i][j]
            for k, act in enumerate(acts):
                xs, ys, hatch = [], [], []
                for g, head in enumerate(heads):
                    cell = cells.get((name, arch, act, head))
                    if cell is not None and cell.ratio is not None:
                        xs.append(g + (k - (len(acts) - 1) / 2) * width)
                        ys.append(cell.ratio)
                        hatch.append("" if cell.executor == "numpy-compiled" else "//")
                bars = ax.bar(xs, ys, width, color=colours[k], label=act, edgecolor="black", linewidth=0.4)
                for bar, h in zip(bars, hatch, strict=True):
                    bar.set_hatch(h)
            ax.axhline(1.0, color="black", lw=1)
            ax.set_yscale("log")
            times = FuncFormatter(lambda v, _: f"{v:g}×")
            ax.yaxis.set_major_formatter(times)
            ax.yaxis.set_minor_formatter(times)
            ax.tick_params(axis="y", which="minor", labelsize=7)
            ax.set_xticks(range(len(heads)))
            ax.set_xticklabels([h.replace(" (", "\n(") for h in heads], fontsize=7)
            ax.set_title(f"{arch}, {name}", fontsize=10)
            ax.grid(True, axis="y", which="both", alpha=0.3)
            if j == 0:
                ax.set_ylabel("fastest peer time / hessarray time")
    axes[0][0].legend(fontsize=8, title="activation (hatched: portable executor)", title_fontsize=7)
    fig.suptitle("hessarray on NumPy against the fastest peer: value, gradient and Hessian", fontsize=11)
    fig.tight_layout()
    fig.savefig(cfg.act_plot, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------


def marked_sections(text: str) -> list[str]:
    """Sections of the old report written by other tools, to keep: each between
    ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` (e.g. ``curvature_bench.py``'s)."""
    found = re.finditer(r"^<!-- ([\w.-]+):begin -->$.*?^<!-- \1:end -->$", text, flags=re.M | re.S)
    return [line for m in found for line in ["", *m.group(0).splitlines()]]


ALL_CASES = ["pinn", "mid", "wide", "hessquik", "modegrid", "memory", "batchplot", "activations"]
QUICK_DEFAULT = ["pinn", "hessquik", "modegrid", "memory"]


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Compare hessarray's input Hessians with TensorFlow, JAX, torch.func and hessQuik.",
        epilog="Run as: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python asv_bench/compare.py",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes, float64, few repeats: a smoke test (< 1 min)")
    p.add_argument(
        "--cases",
        nargs="+",
        choices=ALL_CASES,
        help="sections to run (default: all; with --quick: " + " ".join(QUICK_DEFAULT) + ")",
    )
    p.add_argument(
        "--systems",
        nargs="+",
        metavar="SUBSTRING",
        help=f"only systems whose name contains one of these ({HA_MAIN!r} always runs)",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        choices=["float64", "float32"],
        help="default: float64 and float32 (float64 only with --quick)",
    )
    p.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the markdown report and the plot (default: only for a full run of every case)",
    )
    p.add_argument("--markdown", default=str(REPO / "docs" / "benchmarks.md"))
    p.add_argument("--plot", default=str(REPO / "docs" / "benchmarks_batch.png"))
    p.add_argument(
        "--act-plot",
        default=str(REPO / "docs" / "benchmarks_activations.png"),
        help="the activation grid's plot (written with --write)",
    )
    p.add_argument(
        "--activations",
        nargs="+",
        choices=ACTIVATIONS,
        default=list(ACTIVATIONS),
        help="the activation grid's activations (default: all)",
    )
    p.add_argument(
        "--portable",
        action="store_true",
        help="switch NumPy's compiled executor off (hessarray._numpy.ENABLED = False): the portable one runs",
    )
    cfg = p.parse_args(argv)
    if cfg.cases is None:
        cfg.cases = QUICK_DEFAULT if cfg.quick else ALL_CASES
    if cfg.dtypes is None:
        cfg.dtypes = ["float64"] if cfg.quick else ["float64", "float32"]
    cfg.dtypes = [np.float64 if t == "float64" else np.float32 for t in cfg.dtypes]
    if cfg.write is None:
        cfg.write = not cfg.quick and set(cfg.cases) == set(ALL_CASES) and not cfg.systems
    return cfg


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    start = time.perf_counter()
    try:
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 in JAX (float32 inputs stay float32)
    except ImportError:
        pass
    flags = set_compiled(False) if cfg.portable else None
    try:
        return run(cfg, start)
    finally:
        if flags is not None:
            set_compiled(flags)


def run(cfg: argparse.Namespace, start: float) -> int:
    """The sections ``cfg`` asks for (see :func:`main`)."""
    systems = make_systems()
    if cfg.systems:
        systems = [s for s in systems if s.name == HA_MAIN or any(k in s.name for k in cfg.systems)]
    if cfg.quick:
        st = Settings(repeats=2, max_repeats=3, budget_s=0.2, max_call_s=1.0, probe=16)
    else:
        st = Settings()

    rep = Report()
    rep.out("# Benchmarks: hessarray against other Hessian systems")
    rep.out()
    rep.out(f"Generated by `asv_bench/compare.py` on {time.strftime('%Y-%m-%d %H:%M')}, from the repository root:")
    rep.out()
    unset = [v for v in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if v not in os.environ]
    prefix = ("env " + " ".join(f"-u {v}" for v in unset) + " ") if len(unset) == 2 else ""
    rep.out("```bash")
    rep.out(f"{prefix}python asv_bench/compare.py {' '.join(shlex.quote(a) for a in sys.argv[1:])}".rstrip())
    rep.out("```")
    rep.out()
    rep.out(
        "(`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE` lets OpenBLAS choose its kernel for this CPU; it "
        "belongs to this command only.) `python asv_bench/compare.py --quick` is a smoke test (under a "
        "minute, writes nothing); `--cases` and `--systems` select parts. The per-layer kernels and the "
        "public calls on every backend are tracked over commits by the asv suite in `asv_bench/`: "
        "`cd asv_bench && asv run --python=same --quick` benchmarks the installed package, "
        "`asv run --config asv.virtualenv.conf.json HEAD~5..HEAD` builds and benchmarks commits, and "
        "`bash asv_bench/ci_quick.sh` is the check CI runs."
    )
    rep.out()
    n = 400 if cfg.quick else 2000
    rates = {}
    for dt in ("float64", "float32"):
        for threads in sorted({1, NCORES}):
            rates[(dt, threads)] = matmul_rate(n, np.dtype(dt), threads)
    cfg.rates = rates
    rep.out("## Machine")
    rep.out()
    info = [
        ["CPU (/proc/cpuinfo)", cpu_model()],
        ["cores (os.cpu_count)", str(NCORES)],
        ["load average before the run", ", ".join(f"{v:.2f}" for v in os.getloadavg())],
        ["NumPy BLAS (threadpoolctl)", blas_info()],
        [
            "OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE",
            f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')}, {os.environ.get('OPENBLAS_L2_SIZE', 'unset')}",
        ],
    ]
    for (dt, threads), rate in rates.items():
        info.append(
            [f"np.matmul {n}×{n} {dt}, {threads} thread{'s' if threads > 1 else ''}", f"{rate / 1e9:.1f} GFLOP/s"]
        )
    info += [[k, v] for k, v in versions().items()]
    rep.table(["", ""], info)
    missing = [f"{s.name}: {s.missing}" for s in systems if s.missing]
    if missing:
        rep.out("Not run: " + "; ".join(missing) + ".")
        rep.out()
    rep.out(
        "How to read this: the machine is shared and noisy, so the ratios between systems measured in "
        "one run (round-robin, each round starting with the next system; medians) are the meaningful "
        "numbers, absolute times much less. In each round a system's timed call follows one untimed call "
        "of its own (for calls under 0.5 s): the previous system leaves the cores and thread pools cold. Every "
        "result is checked before it is timed: relative error (max |a-b| / max |b| over value, gradient "
        "and Hessian) ≤ 1e-10 against hessarray in float64, ≤ 1e-3 in float32 (against hessarray's "
        "float64 result); a system that fails is marked MISMATCH and not timed. Systems whose thread pools "
        "can be resized at run time (hessarray's block workers with NumPy's BLAS, torch) are timed with "
        f"the faster of one thread and their default for {NCORES} cores (column *threads*): on this "
        "shared machine multi-threaded pools are often several times slower. JAX and TensorFlow use "
        "their default pools. A system far too slow for the whole batch is timed on fewer samples and "
        "its time scaled (see *note*)."
    )
    rep.out()

    rep.summary_at = len(rep.md)
    kept: dict = {}
    section: list[str] = []  # the activation grid's marked section
    sections = [
        ("pinn", lambda: kept.update(main_cases(rep, cfg, systems, st))),
        ("hessquik", lambda: hessquik_cases(rep, cfg, systems, st)),
        ("modegrid", lambda: mode_grid(rep, cfg)),
        ("memory", lambda: memory(rep, cfg)),
        ("batchplot", lambda: batch_plot(rep, cfg, systems, kept)),
        ("activations", lambda: section.extend(activation_grid(rep, cfg, systems, st))),
    ]
    for key, run in sections:
        wanted = key in cfg.cases or (key == "pinn" and {"mid", "wide"} & set(cfg.cases))
        if wanted:
            t0 = time.perf_counter()
            run()
            print(f"  [{key}: {time.perf_counter() - t0:.0f} s]", flush=True)
    rep.out(f"Total run time: {time.perf_counter() - start:.0f} s.")
    if rep.goals:
        lines = rep.summary()
        print("\n".join(lines))
        rep.md[rep.summary_at : rep.summary_at] = lines
    if cfg.write:
        path = Path(cfg.markdown)
        wrote = []
        if set(cfg.cases) - {"activations"}:  # the whole report (keeping the marked sections)
            kept_sections = marked_sections(path.read_text()) if path.exists() else []
            path.write_text("\n".join(rep.md + kept_sections) + "\n")
            wrote += [cfg.markdown] + ([cfg.plot] if "batchplot" in cfg.cases else [])
        if section:  # only its own marked section
            write_section("\n".join(section), *markers("activations"), docs=path)
            wrote += [f"the activations section of {cfg.markdown}", cfg.act_plot]
        print("wrote " + ", ".join(wrote))
    return 0


if __name__ == "__main__":
    sys.exit(main())
