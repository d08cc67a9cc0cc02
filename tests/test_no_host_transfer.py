"""No hidden host transfers: every public function keeps its work on the input's device.

Each public derivative function (and the model's ``__call__``, ``ParameterOperator``'s
products, ``plan``) runs on model parameters and inputs that live on a device, with detectors
that raise on any read of an array's values by the host (``float()``, ``bool()``, ``int()``,
``.item()``, ``np.asarray()``, ``.tolist()``) or any mixing of devices:

* **array-api-strict's second device** (``"device1"``), eagerly. array-api-strict itself
  raises when arrays of two devices meet and on ``np.asarray`` of a non-CPU array; it lets
  ``float()``/``bool()``/``int()`` through, so :func:`strict_tripwire` makes those raise for
  arrays off the CPU device. Every output must be on ``device1`` with the input's dtype.
* **JAX under ``jax.jit``**, with the model built inside the jitted function from traced
  parameters: every array the library touches is a tracer, and a host read of a tracer
  raises (``ConcretizationTypeError`` / ``TracerArrayConversionError``) on every backend.
  Every case is traced (``jax.eval_shape``, which traces as ``jax.jit`` does, without
  compiling); a few (:data:`JIT_RUN`) are also compiled and run under
  ``jax.transfer_guard("disallow")``.
* **JAX eagerly** (a few cases, :data:`JAX_EAGER`: eager JAX compiles every operation per
  shape), under ``jax.transfer_guard_device_to_host("disallow")`` and :func:`jax_tripwire`.

Finding (JAX 0.10, CPU-only; checked by :func:`test_positive_control_device_to_host_guard`):
``jax.transfer_guard_device_to_host("disallow")`` does **not** fire on the CPU backend:
``np.asarray``, ``float``, ``bool``, ``.item()`` of a CPU array are allowed, because a CPU
buffer already is host memory (no transfer happens). Forcing two virtual CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=2``) does not change that, nor does the
device-to-device guard. ``jax.transfer_guard("disallow")`` does fire on CPU, but only for
host-to-device transfers, and eager ``jax.numpy`` makes one for every Python-scalar operand
(``x * 0.5``), so it can guard jitted calls only (where scalars are compile-time constants).
What catches host reads on CPU is tracing (above) and, eagerly, :func:`jax_tripwire`, which
makes ``jax.Array``'s host conversions raise for the duration of a call. On an accelerator
the guard should fire itself (there the positive control asserts it; not run on a GPU yet).
The positive controls below check that each detector used here raises on a host read.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat
import numpy as np
import pytest
from backends import make_backend

import hessarray as ha

D, N, M, B, K = 3, 4, 2, 8, 2
_rng = np.random.default_rng(14)
#: The model's arrays: Dense, Tanh, Residual(Dense, Softplus), Dense, MSELoss. The residual
#: block's parameters ("2.0.weight") take the nested owner-by-owner paths.
SHAPES = {"W1": (N, D), "b1": (N,), "W2": (N, N), "b2": (N,), "W3": (M, N), "target": (B, M)}
P = N * D + N + N * N + N + M * N
ARRAYS = {name: _rng.standard_normal(shape) / 2 for name, shape in SHAPES.items()}
X = _rng.standard_normal((B, D))
#: Per-call extra arrays: input-space directions, parameter-space directions.
EXTRA = {
    "u": _rng.standard_normal((B, D)),
    "U": _rng.standard_normal((B, D, K)),
    "pv": _rng.standard_normal((P,)),
    "pV": _rng.standard_normal((P, K)),
    "p_weight": _rng.standard_normal((N, D)),
    "p_bias": _rng.standard_normal((N,)),
    "p_w2": _rng.standard_normal((N, N)),
}
DTYPE = np.float32  # float32 also catches a silent promotion to float64 (JAX runs with x64 on)
#: Chunks of 3 samples: batch 8 runs in several blocks.
CHUNK = 3


def build(a: dict[str, Any]) -> tuple[ha.Sequential, ha.Sequential]:
    """The scalar model (ending in a loss) and its vector-valued body, from arrays ``a``."""
    body = [
        ha.Dense(a["W1"], a["b1"]),
        ha.Tanh(),
        ha.Residual(ha.Dense(a["W2"], a["b2"]), ha.Softplus(), h=0.5),
        ha.Dense(a["W3"]),
    ]
    return ha.Sequential(*body, ha.MSELoss(a["target"])), ha.Sequential(*body)


def _operator(s, x, e):
    op = ha.parameter_operator(s, x)
    ggn = ha.parameter_operator(s, x, curvature="gauss_newton", chunk_size=CHUNK)
    return op @ e["pv"], op.matvec(e["pV"]), ggn @ {"0.weight": e["p_weight"]}, ggn.matvec(e["pv"])


def _moved(s, x, e):
    """``model.to`` the input's own library and device (nothing to move), then a derivative."""
    same = s.to(array_api_compat.array_namespace(x), device=array_api_compat.device(x))
    return ha.gradient(same, x), [a for _, a in same.arrays()]


#: name -> (what public API it covers, fn(scalar_model, vector_model, x, extras) -> result).
CASES: dict[str, tuple[set[str], Callable[..., Any]]] = {
    "model(x)": ({"Sequential.__call__"}, lambda s, v, x, e: (s(x), v(x), v(x[0, ...]))),
    "derivatives": ({"derivatives"}, lambda s, v, x, e: (ha.derivatives(s, x), ha.derivatives(v, x[0, ...]))),
    "derivatives reverse": ({"derivatives"}, lambda s, v, x, e: ha.derivatives(v, x, mode="reverse")),
    "derivatives chunked": ({"derivatives"}, lambda s, v, x, e: ha.derivatives(s, x, chunk_size=CHUNK)),
    "hessian": ({"hessian"}, lambda s, v, x, e: (ha.hessian(v, x), ha.hessian(s, x, mode="reverse"))),
    "jacobian": ({"jacobian"}, lambda s, v, x, e: (ha.jacobian(v, x), ha.jacobian(s, x, chunk_size=CHUNK))),
    "gradient": ({"gradient"}, lambda s, v, x, e: ha.gradient(s, x)),
    "hessian_diagonal": (
        {"hessian_diagonal"},
        lambda s, v, x, e: (ha.hessian_diagonal(v, x), ha.hessian_diagonal(s, x, chunk_size=CHUNK)),
    ),
    "laplacian": ({"laplacian"}, lambda s, v, x, e: (ha.laplacian(s, x), ha.laplacian(v, x, chunk_size=CHUNK))),
    "hvp one vector": ({"hvp"}, lambda s, v, x, e: (ha.hvp(s, x, e["u"]), ha.hvp(v, x[0, ...], e["u"][0, ...]))),
    "hvp several vectors": ({"hvp"}, lambda s, v, x, e: ha.hvp(v, x, e["U"], chunk_size=CHUNK)),
    "wrt summed": (
        {"derivatives", "hessian", "gradient"},
        lambda s, v, x, e: (
            ha.derivatives(s, x, wrt="0.weight"),
            ha.hessian(v, x, wrt="2.0.bias", mode="reverse"),
            ha.gradient(s, x, wrt="3.weight", chunk_size=CHUNK),
        ),
    ),
    "wrt per_sample": (
        {"derivatives", "hessian", "jacobian", "gradient"},
        lambda s, v, x, e: (
            ha.derivatives(s, x, wrt="2.0.weight", per_sample=True),
            ha.hessian(v, x, wrt="0.bias", per_sample=True, chunk_size=CHUNK),
            ha.jacobian(v, x, wrt="3.weight"),
            ha.gradient(s, x, wrt="0.weight", per_sample=True),
        ),
    ),
    "parameter_hessian layer": (
        {"parameter_hessian"},
        lambda s, v, x, e: (ha.parameter_hessian(s, x), ha.parameter_hessian(v, x, flat=True, chunk_size=CHUNK)),
    ),
    "parameter_hessian per_sample": (
        {"parameter_hessian"},
        lambda s, v, x, e: ha.parameter_hessian(s, x, per_sample=True, chunk_size=CHUNK),
    ),
    "parameter_hessian full": (
        {"parameter_hessian"},
        lambda s, v, x, e: (
            ha.parameter_hessian(s, x, blocks="full"),
            ha.parameter_hessian(v, x, blocks="full", flat=True),
        ),
    ),
    "gauss_newton": (
        {"gauss_newton"},
        lambda s, v, x, e: (ha.gauss_newton(s, x, chunk_size=CHUNK), ha.gauss_newton(s, x, blocks="full", flat=True)),
    ),
    "parameter_hvp": (
        {"parameter_hvp"},
        lambda s, v, x, e: (
            ha.parameter_hvp(s, x, e["pv"]),
            ha.parameter_hvp(s, x, {"0.bias": e["p_bias"], "2.0.weight": e["p_w2"]}),
            ha.parameter_hvp(s, x, e["pv"], curvature="gauss_newton", chunk_size=CHUNK),
        ),
    ),
    "parameter_operator": (
        {"parameter_operator", "ParameterOperator.__matmul__", "ParameterOperator.matvec"},
        lambda s, v, x, e: _operator(s, x, e),
    ),
    "plan": ({"plan"}, lambda s, v, x, e: ha.plan(s, x)),
    "model.to": ({"Sequential.to"}, lambda s, v, x, e: _moved(s, x, e)),
}


def _takes(fn: Callable, keyword: str) -> bool:
    return keyword in inspect.signature(fn).parameters


def _small_budget(s, x) -> int:
    """The smallest power-of-two ``max_memory`` a call on ``x`` accepts: several blocks."""
    for k in range(8, 30):
        try:
            p = ha.plan(s, x, max_memory=1 << k)
        except MemoryError:
            continue
        assert p.chunk_size < x.shape[0], f"max_memory={1 << k} runs {p.chunk_size} of {x.shape[0]} samples at once"
        return 1 << k
    raise AssertionError("no max_memory accepted")


def _with_small_budget(call: Callable[[int], Any], budget: int) -> Any:
    """``call(max_memory)`` with the smallest power of two from ``budget`` up that it accepts
    (calls needing more per sample than :func:`_small_budget`'s plan raise before any work)."""
    for _ in range(8):
        try:
            return call(budget)
        except MemoryError:
            budget *= 2
    raise AssertionError("no max_memory accepted")


def _chunked(s, v, x, e):
    """Calls with ``max_memory`` small enough for several blocks (and a progress bar)."""
    budget = _small_budget(s, x)
    out = [ha.derivatives(s, x, max_memory=budget, progress=True)]
    calls = [
        lambda b: ha.hvp(v, x, e["U"], max_memory=b),
        lambda b: ha.laplacian(s, x, max_memory=b),
        lambda b: ha.derivatives(s, x, wrt="2.0.weight", per_sample=True, max_memory=b),
    ]
    for fn in (ha.parameter_hessian, ha.gauss_newton):  # (where they take it)
        if _takes(fn, "max_memory"):
            calls.append(lambda b, fn=fn: fn(s, x, max_memory=b))
    if _takes(ha.parameter_operator, "max_memory"):
        calls.append(lambda b: ha.parameter_operator(s, x, max_memory=b) @ e["pv"])
    return out + [_with_small_budget(call, budget) for call in calls]


# ``max_memory=`` and ``progress=`` (being added for issue 14): covered once they exist.
if _takes(ha.derivatives, "max_memory") and _takes(ha.derivatives, "progress"):
    CASES["max_memory chunked"] = ({"derivatives", "hvp"}, _chunked)

#: Public functions that compute no derivatives of arrays on a device (conversion, file I/O).
NOT_DERIVATIVES = {
    "from_torch": "builds a model from a torch module (its arrays are the user's choice)",
    "load": "file I/O: reads from the host by design",
    "save": "file I/O: writes to the host by design",
}


def _public_api() -> set[str]:
    """The public functions and the public methods of the returned objects that compute."""
    names = {n for n in ha.__all__ if inspect.isfunction(getattr(ha, n))}
    names -= set(NOT_DERIVATIVES)
    names |= {"Sequential.__call__"}
    names |= {
        f"ParameterOperator.{n}"
        for n, f in vars(ha.ParameterOperator).items()
        if callable(f) and (not n.startswith("_") or n == "__matmul__")
    }
    if hasattr(ha.Sequential, "to"):
        names.add("Sequential.to")
    return names


def test_every_public_function_is_covered():
    """A new public derivative function must get a case here (or a reason in NOT_DERIVATIVES)."""
    covered = set().union(*(api for api, _ in CASES.values())) | set(EXTRA_COVERED)
    missing = _public_api() - covered
    assert not missing, f"public functions without a no-host-transfer case: {sorted(missing)}"
    stale = set(NOT_DERIVATIVES) - set(ha.__all__)
    assert not stale, f"NOT_DERIVATIVES names that are no longer public: {sorted(stale)}"


#: Public API covered by tests below other than CASES (filled in as they are defined).
EXTRA_COVERED: set[str] = set()


# -- helpers -------------------------------------------------------------------------------------
def _leaves(tree: Any) -> list:
    """The arrays in a result: nested tuples, NamedTuples, dicts; ``None`` and plans skipped."""
    if tree is None or isinstance(tree, ha.Plan):
        return []
    if isinstance(tree, dict):
        return [a for v in tree.values() for a in _leaves(v)]
    if isinstance(tree, list | tuple):
        return [a for v in tree for a in _leaves(v)]
    return [tree]


def _check_leaves(name: str, result: Any, x: Any, device: Any) -> None:
    arrays = _leaves(result)
    if name == "plan":
        assert isinstance(result, ha.Plan)
        return
    assert arrays, f"{name}: no arrays in the result"
    for a in arrays:
        assert type(a) is type(x), f"{name}: {type(a).__name__} is not of the input's kind {type(x).__name__}"
        assert a.dtype == x.dtype, f"{name}: dtype {a.dtype} != input's {x.dtype}"
        where = a.device
        assert where == device, f"{name}: result on {where}, not on the input's device {device}"


def _on(backend, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: backend.asarray(v.astype(DTYPE)) for k, v in arrays.items()}


# -- detectors -----------------------------------------------------------------------------------
_HOST_READS = ("__float__", "__bool__", "__int__", "__index__", "__complex__", "__array__", "__dlpack__")


@contextlib.contextmanager
def strict_tripwire() -> Iterator[None]:
    """Make host reads of array-api-strict arrays off the CPU device raise ``RuntimeError``.

    array-api-strict already raises on ``np.asarray`` of such arrays and on mixing devices;
    ``float()``, ``bool()``, ``int()`` and DLPack export pass. Patched for the block only.
    """
    from array_api_strict._array_object import CPU_DEVICE, Array

    saved = {name: Array.__dict__[name] for name in _HOST_READS if name in Array.__dict__}

    def wire(name, original):
        def read(self, *args, **kwargs):
            if self.device != CPU_DEVICE:
                raise RuntimeError(f"host read {name} of an array on {self.device}")
            return original(self, *args, **kwargs)

        return read

    try:
        for name, original in saved.items():
            setattr(Array, name, wire(name, original))
        yield
    finally:
        for name, original in saved.items():
            setattr(Array, name, original)


@contextlib.contextmanager
def jax_tripwire() -> Iterator[None]:
    """Make every host read of a concrete ``jax.Array`` raise ``RuntimeError`` (the CPU stand-in
    for the device-to-host guard, which does not fire there), inside the guard itself.

    ``float()``, ``bool()``, ``.item()``, ... are patched on the array class; ``np.asarray``
    reads a CPU array through the buffer protocol, which cannot be patched, so NumPy's
    converters are wrapped to refuse JAX arrays instead.
    """
    import jax
    from jax._src.array import ArrayImpl

    names = (*_HOST_READS, "item", "tolist", "_value")
    saved = {name: getattr(ArrayImpl, name) for name in names if hasattr(ArrayImpl, name)}
    converters = {name: getattr(np, name) for name in ("asarray", "array", "asanyarray", "ascontiguousarray")}

    def read(*args, **kwargs):
        raise RuntimeError("host read of a jax.Array")

    def refusing(convert):
        def to_numpy(a, *args, **kwargs):
            if isinstance(a, jax.Array):
                read()
            return convert(a, *args, **kwargs)

        return to_numpy

    try:
        for name in saved:
            setattr(ArrayImpl, name, property(read) if name == "_value" else read)
        for name, convert in converters.items():
            setattr(np, name, refusing(convert))
        with jax.transfer_guard_device_to_host("disallow"):
            yield
    finally:
        for name, original in saved.items():
            setattr(ArrayImpl, name, original)
        for name, convert in converters.items():
            setattr(np, name, convert)


def _host_reads(a: Any) -> dict[str, Callable[[], Any]]:
    one = a[(0,) * a.ndim]
    return {
        "np.asarray": lambda: np.asarray(a),
        "float": lambda: float(one),
        "bool": lambda: bool(one > 0),
        "int": lambda: int(one),
        "item": lambda: one.item(),
        "tolist": lambda: a.tolist(),
    }


# -- positive controls -----------------------------------------------------------------------------
def test_positive_control_device_to_host_guard():
    """``jax.transfer_guard_device_to_host("disallow")`` raises on a host read where it fires
    (accelerators); on the CPU backend it does not (see the module docstring)."""
    import jax

    make_backend("jax")
    y = jax.numpy.ones(3, dtype=jax.numpy.float32) + 1
    fired = []
    for name, read in _host_reads(y).items():
        try:
            with jax.transfer_guard_device_to_host("disallow"):
                read()
        except Exception:
            fired.append(name)
    if jax.default_backend() == "cpu" and not fired:
        pytest.xfail("documented: the device-to-host transfer guard never fires on JAX's CPU backend")
    assert set(fired) >= {"np.asarray", "float", "bool", "int"}, f"the guard fired only for {fired}"


def test_positive_control_jax_tripwire():
    """Eagerly: every host read of a concrete jax.Array raises under :func:`jax_tripwire`,
    and works again after it."""
    import jax

    make_backend("jax")
    y = jax.numpy.ones((2, 2), dtype=jax.numpy.float32) + 1
    for read in _host_reads(y).values():
        with jax_tripwire(), pytest.raises(Exception, match="host|transfer|Disallowed"):
            read()
        read()  # restored
    with jax_tripwire():  # device-side work (and reading shapes) still works
        z = y @ y * 0.5
        assert z.shape == (2, 2)


def test_positive_control_jit_tracing():
    """Under ``jax.jit`` a host read of a traced array raises, and so does an implicit
    host-to-device transfer under ``jax.transfer_guard("disallow")``."""
    import jax

    make_backend("jax")
    y = jax.numpy.ones((2, 2), dtype=jax.numpy.float32)
    for name in _host_reads(y):

        def f(a, name=name):
            _host_reads(a)[name]()
            return a

        with pytest.raises(Exception, match="[Tt]race|[Cc]oncret|Abstract"):
            jax.jit(f)(y)
    with jax.transfer_guard("disallow"), pytest.raises(Exception, match="Disallowed host-to-device"):
        jax.jit(lambda a: a * 2)(np.ones(2, dtype=np.float32))


def test_positive_control_strict_device1():
    """array-api-strict's device1 raises on mixing devices and, with :func:`strict_tripwire`,
    on every host read."""
    import array_api_strict

    dev = make_backend("array_api_strict:device1")
    a = dev.asarray(np.ones((2, 2), dtype=DTYPE))
    with pytest.raises(ValueError, match="different devices"):
        a + array_api_strict.asarray(np.ones((2, 2), dtype=DTYPE))
    reads = {k: f for k, f in _host_reads(a).items() if k not in ("item", "tolist")}  # (not in the standard)
    for read in reads.values():
        with strict_tripwire(), pytest.raises(RuntimeError, match="device1|NumPy"):
            read()
    float(a[0, 0]), bool(a[0, 0] > 0)  # restored
    cpu = make_backend("array_api_strict").asarray(np.ones(2, dtype=DTYPE))
    with strict_tripwire():
        float(cpu[0])  # CPU arrays are left alone


# -- the public API on a device ---------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_strict_device1(case):
    """Model and input on array-api-strict's device1: no host read, every output on device1
    with the input's dtype."""
    dev = make_backend("array_api_strict:device1")
    s, v = build(_on(dev, ARRAYS))
    x, extra = dev.asarray(X.astype(DTYPE)), _on(dev, EXTRA)
    with strict_tripwire():
        result = CASES[case][1](s, v, x, extra)
    _check_leaves(case, result, x, dev.device)


def test_strict_to_device1():
    """``model.to(array_api_strict, device=Device("device1"))`` from the CPU device moves the
    arrays device to device (no host read of device1); derivatives then stay on device1."""
    import array_api_strict

    cpu, dev = make_backend("array_api_strict"), make_backend("array_api_strict:device1")
    s, _ = build(_on(cpu, ARRAYS))
    x, extra = dev.asarray(X.astype(DTYPE)), _on(dev, EXTRA)
    with strict_tripwire():
        moved = s.to(array_api_strict, device=dev.device)
        result = [a for _, a in moved.arrays()], ha.hessian(moved, x), ha.hvp(moved, x, extra["u"])
    _check_leaves("model.to", result, x, dev.device)


EXTRA_COVERED.add("Sequential.to")


def _traced(case: str) -> Callable:
    """``CASES[case]`` as a function of the arrays alone: the model is built from them, so that
    under ``jax.jit`` every array the library touches is a tracer. Plans are kept aside."""
    fn = CASES[case][1]

    def run(arrays, x, extra, plans):
        s, v = build(arrays)
        result = fn(s, v, x, extra)
        if isinstance(result, ha.Plan):
            plans.append(result)
            return ()
        return result

    return run


@pytest.mark.parametrize("case", list(CASES))
def test_jax_jit_traced(case):
    """Traced as ``jax.jit`` traces (``jax.eval_shape``: no compilation), with the model built
    from traced arrays: any host read of a value raises. Output dtypes are the input's."""
    import jax

    jx = make_backend("jax")
    plans: list = []
    x = jx.asarray(X.astype(DTYPE))
    run = _traced(case)
    out = jax.eval_shape(lambda *a: run(*a, plans), _on(jx, ARRAYS), x, _on(jx, EXTRA))
    if case == "plan":
        assert isinstance(plans[0], ha.Plan)
        return
    assert _leaves(out), case
    for a in _leaves(out):
        assert a.dtype == x.dtype, f"{case}: dtype {a.dtype} != input's {x.dtype}"


#: Cases compiled and run (compiling all of them would take minutes; tracing above covers all).
JIT_RUN = ["derivatives chunked", "hvp several vectors", "parameter_operator"]
#: Cases run eagerly on JAX (each eager JAX operation compiles once per shape: slow).
JAX_EAGER = ["model(x)", "gradient", "model.to"]


@pytest.mark.parametrize("case", JIT_RUN)
def test_jax_jit_run(case):
    """Compiled and run under ``jax.transfer_guard("disallow")``; outputs on the input's device."""
    import jax

    jx = make_backend("jax")
    arrays, x, extra = _on(jx, ARRAYS), jx.asarray(X.astype(DTYPE)), _on(jx, EXTRA)
    run = _traced(case)
    with jax.transfer_guard("disallow"):
        result = jax.jit(lambda *a: run(*a, []))(arrays, x, extra)
    _check_leaves(case, result, x, jx.device)


@pytest.mark.parametrize("case", JAX_EAGER)
def test_jax_eager(case):
    """Eager JAX under the device-to-host guard and :func:`jax_tripwire`."""
    jx = make_backend("jax")
    s, v = build(_on(jx, ARRAYS))
    x, extra = jx.asarray(X.astype(DTYPE)), _on(jx, EXTRA)
    with jax_tripwire():
        result = CASES[case][1](s, v, x, extra)
    _check_leaves(case, result, x, jx.device)
