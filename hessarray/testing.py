"""Checks for layers written by users: :func:`check_layer`.

The checker is test tooling, not a hot path: it copies the layer's arrays and ``x`` to the host
as float64 NumPy arrays, compares against references formed with NumPy (``einsum`` included)
and finite differences, and then runs the layer once more on ``array_api_strict`` arrays.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ._backend import device, is_array_api_obj
from .engine import curvature
from .engine.forward import contract, forward_mode, identity_seed
from .engine.reverse import reverse_mode
from .layers.base import Contracted, Layer, tangent_seed
from .layers.chain import forward_chain, pull_chain, pull_hessian_chain
from .layers.dense import Dense

__all__ = ["LayerReport", "check_layer"]

#: Adjoint rows (model outputs) and random tangent directions used by the checks.
_M = 2
_K = 2


@dataclasses.dataclass
class LayerReport:
    """What :func:`check_layer` verified.

    Attributes
    ----------
    layer : str
        ``repr`` of the layer.
    checked : dict of str to float
        Each part of the contract that was compared, with its worst error relative to the
        tolerance (``max |got - want| / (atol + rtol |want|)``; at most 1 when it passes).
    skipped : list of str
        Parts that could not be checked, and why (``array_api_strict`` not installed, a
        parameter that cannot be perturbed, ...).
    """

    layer: str
    checked: dict[str, float] = dataclasses.field(default_factory=dict)
    skipped: list[str] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{self.layer}: {len(self.checked)} checks passed"]
        lines += [f"  {ratio:8.2e}  {part}" for part, ratio in self.checked.items()]
        lines += [f"  skipped: {note}" for note in self.skipped]
        return "\n".join(lines)


def check_layer(
    layer: Layer,
    x: Any,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    eps: float = 1e-5,
    seed: int = 0,
    strict: bool = True,
) -> LayerReport:
    """Check that a layer keeps the whole layer contract, as ``torch.autograd.gradgradcheck`` does.

    Runs the layer on ``x`` (cast to float64 NumPy; a 1-D ``x`` is one sample) and on copies of
    its arrays in float64, with random adjoints ``g`` for two outputs and random tangents, and
    compares:

    - the Jacobian from :meth:`~hessarray.Layer.push`, :meth:`~hessarray.Layer.pull` and
      ``constant_jacobian`` with central differences of ``forward``;
    - the curvature ``Σ_j g_j ∇²y_j`` from ``pull_hessian`` with central differences of
      ``pull``; the factors that ``push`` returns with adjoints (contracted in full, and to the
      diagonal and trace as the engine does), ``curvature_apply`` and ``pull_hessian`` with
      ``h`` or ``g=None`` with it;
    - forward mode, reverse mode, diagonal, Laplacian and Hessian-vector products of the
      engine, in the chains ``[layer, Dense]`` and ``[Dense, layer, Dense]`` (without the last
      ``Dense`` after a layer with one output per sample);
    - for each parameter (:meth:`~hessarray.Layer.parameters`): ``param_gradient`` with
      central differences of ``forward``, ``param_hessian`` with central differences of
      ``param_gradient`` (both per sample and summed), and ``push_params``,
      ``curvature_apply_params`` and ``param_second`` with central differences along random
      directions of the input and all parameters at once;
    - ``batch_slice`` with the rows of the output, and the layer that ``map_arrays`` rebuilds
      from copies of its arrays with the layer itself;
    - on ``array_api_strict`` arrays (float64 on the default device and on ``"device1"``,
      float32 on ``"device1"``): the same calls give results of that library, of ``x``'s dtype
      and on its device, and in float64 the values of the NumPy run.

    Finite differences need the layer to be smooth around ``x``: choose ``x`` away from kinks
    (``ReLU``, ``LeakyReLU`` at 0) and from where the layer is undefined. The batch of ``x`` is
    the layer's batch: for a loss holding per-sample targets, give as many samples as targets.
    Parameters are perturbed in place in the float64 copies; a layer that keeps, besides its
    parameters, arrays computed from them when it is built (not views of them) cannot be checked
    this way. The cost grows with the number of parameter entries (two evaluations each):
    check small layers with a few samples.

    Parameters
    ----------
    layer : Layer
        The layer to check. It is not modified: the checks run on copies of the layer object
        whose arrays are replaced (other attributes, such as Python callables, are shared).
    x : array, shape (batch, n_in) or (n_in,)
        Input, of any array library; it is copied to a float64 NumPy array.
    rtol, atol : float
        Entries agree when ``|got - want| <= atol + rtol |want|``.
    eps : float
        Relative step of the central differences (``eps (1 + |x|)`` for each entry).
    seed : int
        Seed of the random adjoints, tangents and parameter directions.
    strict : bool, default True
        Also run the layer on ``array_api_strict`` arrays. Skipped, with a note in the
        report, when ``array_api_strict`` is not installed.

    Returns
    -------
    LayerReport
        The parts checked, with their worst errors, and the parts skipped.

    Raises
    ------
    AssertionError
        When a part of the contract fails: the message names the part (for example
        ``"pull_hessian vs finite differences of pull"``), the index of the worst entry, both
        values and the error; or the method that raised, with the exception chained.
    TypeError
        If ``layer`` is not a :class:`~hessarray.Layer`.
    ValueError
        If ``x`` is not a numeric array of shape ``(batch, n_in)`` or ``(n_in,)``.

    Examples
    --------
    >>> import numpy as np, hessarray as ha
    >>> from hessarray.testing import check_layer
    >>> report = check_layer(ha.Tanh(), np.random.default_rng(0).standard_normal((3, 4)))
    >>> report.skipped
    []
    """
    x = _host(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"check_layer: x must be a numeric array of shape (batch, n_in), got shape {x.shape}")
    x = np.array(x, dtype=np.float64)
    if not isinstance(layer, Layer):
        raise TypeError(f"check_layer: layer must be a hessarray Layer, got {type(layer).__name__}")
    check = _Checker(repr(layer), rtol, atol, eps)
    twin = _numpy_twin(layer)
    rng = np.random.default_rng(seed)
    inputs = check.input_checks(twin, x, rng)
    check.parameter_checks(twin, x, inputs, rng)
    check.chain_checks(twin, x, rng)
    if strict:
        check.strict_checks(twin, x, inputs)
    else:
        check.report.skipped.append("array_api_strict run (strict=False)")
    return check.report


# -- copies of the layer --------------------------------------------------------------------------


def _host(a: Any) -> np.ndarray:
    """``a`` as a NumPy array, without a copy where the library allows."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):  # torch: leave autograd, then the host
        a = a.detach().cpu()
    try:
        return np.from_dlpack(a)
    except Exception:  # libraries or devices without DLPack export to the host
        return np.asarray(a)


def _is_array(obj: Any) -> bool:
    return is_array_api_obj(obj) and not isinstance(obj, np.generic)


def _children(obj: Any) -> list[Any] | None:
    """What ``obj`` holds that may contain arrays: a layer's attributes or a container's items."""
    if isinstance(obj, Layer):
        return list(getattr(obj, "__dict__", {}).values())
    if isinstance(obj, (list, tuple)):
        return list(obj)
    if isinstance(obj, dict):
        return list(obj.values())
    return None


def _arrays_in(obj: Any, found: dict[int, Any]) -> None:
    if _is_array(obj):
        found.setdefault(id(obj), obj)
        return
    for child in _children(obj) or []:
        _arrays_in(child, found)


def _rebuild(obj: Any, convert: Callable[[Any], Any], memo: dict[int, Any]) -> Any:
    """``obj`` with every array replaced by ``convert(array)``: layers are copied without
    ``__init__`` (their other attributes are shared), lists, tuples and dicts rebuilt."""
    if id(obj) in memo:
        return memo[id(obj)]
    if _is_array(obj):
        out = convert(obj)
    elif isinstance(obj, Layer):
        if not hasattr(obj, "__dict__"):
            return obj
        out = object.__new__(type(obj))
        memo[id(obj)] = out  # before the attributes: a layer may refer to itself
        out.__dict__.update({k: _rebuild(v, convert, memo) for k, v in obj.__dict__.items()})
        return out
    elif isinstance(obj, list):
        out = [_rebuild(v, convert, memo) for v in obj]
    elif isinstance(obj, tuple):
        items = [_rebuild(v, convert, memo) for v in obj]
        out = type(obj)._make(items) if hasattr(obj, "_make") else type(obj)(items)
    elif isinstance(obj, dict):
        out = type(obj)((k, _rebuild(v, convert, memo)) for k, v in obj.items())
    else:
        out = obj
    memo[id(obj)] = out
    return out


#: Memory extent of an array (NumPy 2 moved it out of the main namespace).
_byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds


def _float64_copies(arrays: list[Any]) -> dict[int, np.ndarray]:
    """Host float64 copies of ``arrays`` (integer ones keep their dtype), by ``id``.

    Arrays that share memory (a bias and the reshaped view a layer keeps of it) are copied
    into one buffer as views of the same layout, so that perturbing one perturbs the others.
    """
    out: dict[int, np.ndarray] = {}
    spans = []
    for a in arrays:
        h = _host(a)
        if h.dtype.kind == "f" and h.size > 0:
            low, high = _byte_bounds(h)
            spans.append((low, high, id(a), h))
        else:
            out[id(a)] = np.array(h, dtype=np.float64 if h.dtype.kind == "f" else h.dtype)
    spans.sort(key=lambda s: s[0])
    groups: list[list] = []
    for span in spans:
        if groups and span[0] < max(s[1] for s in groups[-1]):
            groups[-1].append(span)
        else:
            groups.append([span])
    for group in groups:
        low, high = group[0][0], max(s[1] for s in group)
        size = group[0][3].dtype.itemsize
        aligned = all(
            s[3].dtype.itemsize == size
            and (s[3].ctypes.data - low) % size == 0
            and all(st % size == 0 for st in s[3].strides)
            for s in group
        )
        if not aligned:  # views of another dtype: copied separately
            out.update((s[2], np.array(s[3], dtype=np.float64)) for s in group)
            continue
        buffer = np.zeros((high - low) // size, dtype=np.float64)
        for _, _, key, h in group:
            view = np.ndarray(
                h.shape,
                np.float64,
                buffer=buffer,
                offset=(h.ctypes.data - low) // size * 8,
                strides=tuple(st // size * 8 for st in h.strides),
            )
            view[...] = h
            out[key] = view
    return out


def _numpy_twin(layer: Layer) -> Layer:
    """The layer with float64 NumPy copies of its arrays."""
    found: dict[int, Any] = {}
    _arrays_in(layer, found)
    copies = _float64_copies(list(found.values()))
    return _rebuild(layer, lambda a: copies[id(a)], {})


# -- the checks ------------------------------------------------------------------------------------


def _zeros_if_none(a: Any, shape: tuple) -> np.ndarray:
    return np.zeros(shape) if a is None else _host(a)


def _sym(a: np.ndarray) -> np.ndarray:
    return 0.5 * (a + np.swapaxes(a, -1, -2))


class _Results(dict):
    """A dict that shows each value to ``check`` as it is stored."""

    def __init__(self, check: Callable[[str, Any], None] | None) -> None:
        super().__init__()
        self.check = check

    def __setitem__(self, key: str, value: Any) -> None:
        if self.check is not None and value is not None:
            self.check(key, value)
        super().__setitem__(key, value)


@dataclasses.dataclass
class _Owned:
    """Where a parameter lives (:meth:`Layer.param_owner`): its owner, the owner's cache, its
    local name and output, and the layers after the owner run forward from that output."""

    owner: Layer
    cache: Any
    local: str
    y: Any
    steps: list
    y_end: Any

    @classmethod
    def find(cls, layer: Layer, cache: Any, name: str, y: Any) -> _Owned:
        owner, owner_cache, local, y_owner, down = layer.param_owner(cache, name, y)
        steps, y_end = forward_chain(down, y_owner)
        return cls(owner, owner_cache, local, y_owner, steps, y_end)

    def pull(self, g: Any) -> Any:
        """The adjoints ``g`` of the layer's output pulled back to the owner's output."""
        return pull_chain(self.steps, g)

    def pull_hessian(self, g: Any, xp: Any, x: Any) -> Any:
        """The Hessian of ``g · y`` at the owner's output; zeros in ``x``'s library, dtype and
        device where the layers after the owner return none (they are linear)."""
        _, h = pull_hessian_chain(self.steps, g, None)
        if h is None:
            q = self.y.shape[1]
            h = xp.zeros((x.shape[0], _M, q, q), dtype=x.dtype, device=device(x))
        return h


@dataclasses.dataclass
class _Inputs:
    """The random inputs of the direct calls and the float64 NumPy results of them."""

    g: np.ndarray
    h: np.ndarray
    t: np.ndarray
    gd: np.ndarray
    v: dict[str, np.ndarray]
    results: dict[str, Any]


class _Checker:
    def __init__(self, name: str, rtol: float, atol: float, eps: float) -> None:
        self.name, self.rtol, self.atol, self.eps = name, rtol, atol, eps
        self.report = LayerReport(name)
        self.where = ""  # appended to the parts named by calling(): the library being run

    def fail(self, part: str, message: str) -> None:
        raise AssertionError(f"check_layer({self.name}): {part}: {message}")

    @contextlib.contextmanager
    def calling(self, part: str) -> Iterator[None]:
        """Turn an exception of the layer into an ``AssertionError`` naming the part."""
        try:
            yield
        except AssertionError:
            raise
        except Exception as exc:
            message = f"{part}{self.where}: raised {type(exc).__name__}: {exc}"
            raise AssertionError(f"check_layer({self.name}): {message}") from exc

    def compare(self, part: str, got: Any, want: Any) -> None:
        """``got`` (``None``: zero) against the float64 reference ``want``, entrywise."""
        want = np.asarray(want, dtype=np.float64)
        none = got is None
        got = np.zeros(want.shape) if none else np.asarray(_host(got), dtype=np.float64)
        if got.shape != want.shape:
            self.fail(part, f"shape {got.shape}, expected {want.shape}")
        if got.size == 0:
            self.report.checked[part] = max(self.report.checked.get(part, 0.0), 0.0)
            return
        bad = ~(np.isfinite(got) & np.isfinite(want))
        if bad.any():
            index = np.unravel_index(int(np.argmax(bad)), bad.shape)
            self.fail(part, f"non-finite entry at index {index}: got {got[index]!r}, expected {want[index]!r}")
        err = np.abs(got - want)
        ratio = err / (self.atol + self.rtol * np.abs(want))
        index = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        worst = float(ratio[index])
        if worst > 1.0:
            note = " (the layer returned None, taken as zero)" if none else ""
            if "finite differences" in part:
                note += "; finite differences need the layer to be smooth around x (no kink within eps·(1 + |x|))"
            self.fail(
                part,
                f"worst entry at index {tuple(int(i) for i in index)}: got {got[index]:.10g}, expected "
                f"{want[index]:.10g}, error {err[index]:.3g} > atol + rtol·|expected| = "
                f"{self.atol + self.rtol * abs(want[index]):.3g}{note}",
            )
        self.report.checked[part] = max(self.report.checked.get(part, 0.0), worst)

    def steps(self, a: np.ndarray) -> np.ndarray:
        return self.eps * (1.0 + np.abs(a))

    # -- input derivatives --------------------------------------------------------------------------

    def input_checks(self, layer: Layer, x: np.ndarray, rng: np.random.Generator) -> _Inputs:
        batch, n = x.shape
        if layer.in_width is not None and layer.in_width != n:
            self.fail("in_width", f"the layer expects width {layer.in_width}, x has {n}")
        with self.calling("out_width"):
            p = layer.out_width(n)
        with self.calling("check_batch"):
            layer.check_batch(batch)
        with self.calling("forward"):
            y, cache = layer.forward(x)
        if tuple(y.shape) != (batch, p):
            self.fail("forward", f"output shape {tuple(y.shape)}, expected (batch, out_width) = {(batch, p)}")
        if layer.scalar_output and p != 1:
            self.fail("scalar_output", f"scalar_output is True but out_width is {p}")

        def value(xx: np.ndarray) -> np.ndarray:
            with self.calling("forward"):
                return _host(layer.forward(xx)[0])

        def pulled(xx: np.ndarray, gg: np.ndarray) -> np.ndarray:
            with self.calling("pull"):
                return _host(layer.pull(layer.forward(xx)[1], gg))

        # Central differences along each input coordinate, all samples at once.
        step = self.steps(x)
        g = rng.standard_normal((batch, _M, p))
        jac_fd = np.empty((batch, p, n))
        curv_fd = np.empty((batch, _M, n, n))
        for i in range(n):
            dx = np.zeros_like(x)
            dx[:, i] = step[:, i]
            jac_fd[:, :, i] = (value(x + dx) - value(x - dx)) / (2 * step[:, i, None])
            curv_fd[..., i] = (pulled(x + dx, g) - pulled(x - dx, g)) / (2 * step[:, i, None, None])

        # First order.
        with self.calling("push"):
            t_out, factors = layer.push(cache, tangent_seed(np, batch, n, x))
        jac = np.transpose(_host(t_out), (1, 2, 0)) if t_out.ndim == 3 else _host(t_out)
        self.compare("push (Jacobian) vs finite differences of forward", jac, jac_fd)
        if factors:
            self.fail("push", "returned curvature factors without adjoints (g=None)")
        with self.calling("pull"):
            jac_pull = layer.pull(cache, identity_seed(np, batch, p, x))
        self.compare("pull (Jacobian) vs push", jac_pull, jac)
        with self.calling("pull"):
            self.compare("pull of random adjoints vs push", layer.pull(cache, g), np.einsum("bmp,bpn->bmn", g, jac))
        with self.calling("constant_jacobian"):
            const = layer.constant_jacobian(cache)
        if layer.affine and const is None:
            self.fail("constant_jacobian", "affine is True but constant_jacobian returned None")
        if layer.affine and layer.has_curvature:
            self.fail("has_curvature", "an affine layer has no curvature: set has_curvature = False")
        if const is not None:
            jac_const = np.broadcast_to(_host(const).T if const.ndim == 2 else _host(const), (batch, p, n))
            self.compare("constant_jacobian vs push", jac_const, jac)
        t = rng.standard_normal((_K, batch, n))
        with self.calling("push"):
            t_out = layer.push(cache, t)[0]
        self.compare(
            "push (random tangents) vs finite differences of forward", t_out, np.einsum("bpn,kbn->kbp", jac_fd, t)
        )

        # Second order: the curvature C = Σ_j g_j ∇²y_j, (B, m, n, n).
        zero = np.zeros((batch, _M, n, n))
        if not layer.has_curvature:
            self.compare("has_curvature is False vs finite differences of pull", zero, curv_fd)
        with self.calling("pull_hessian"):
            curv = layer.pull_hessian(cache, g, None)
        self.compare("pull_hessian vs finite differences of pull", curv, curv_fd)
        curv = _sym(_zeros_if_none(curv, zero.shape))
        self._fresh_result(layer, x, g)
        hq = rng.standard_normal((batch, _M, p, p))
        h = hq + np.swapaxes(hq, -1, -2)
        jhj = np.einsum("bpi,bmpq,bqj->bmij", jac, h, jac)
        with self.calling("pull_hessian"):
            self.compare(
                "pull_hessian with h vs Jᵀ h J + its curvature", layer.pull_hessian(cache, g, h.copy()), jhj + curv
            )
        with self.calling("pull_hessian"):
            self.compare(
                "pull_hessian with g=None (Gauss-Newton) vs Jᵀ h J", layer.pull_hessian(cache, None, h.copy()), jhj
            )
        with self.calling("pull_hessian"):
            self.compare("pull_hessian with g=None and h=None", layer.pull_hessian(cache, None, None), zero)

        for label, tangents in (("identity", tangent_seed(np, batch, n, x)), ("random", t)):
            k = tangents.shape[0]
            with self.calling("push with adjoints"):
                t_out, factors = layer.push(cache, tangents, g)
            self.compare(
                f"push with adjoints ({label} tangents) vs push", t_out, np.einsum("bpn,kbn->kbp", jac, tangents)
            )
            want = np.einsum("kbi,bmij,lbj->bmkl", tangents, curv, tangents)
            full = np.zeros(want.shape)
            diag = np.zeros(want.shape[:-1])
            trace = np.zeros(want.shape[:-2])
            for f, factor in enumerate(factors):
                with self.calling(f"push with adjoints: factor {f}"):
                    full = full + self._contract_factor(f, factor, k, batch, _M)
                    diag = diag + _host(contract(np, factor, "diag"))
                    trace = trace + _host(contract(np, factor, "trace"))
            self.compare(f"push curvature factors ({label} tangents) vs pull_hessian", _sym(full), want)
            self.compare(
                f"diagonal of the push curvature factors ({label} tangents) vs pull_hessian",
                diag,
                np.diagonal(want, axis1=-2, axis2=-1),
            )
            self.compare(
                f"trace of the push curvature factors ({label} tangents) vs pull_hessian",
                trace,
                np.trace(want, axis1=-2, axis2=-1),
            )
        with self.calling("curvature_apply"):
            applied = layer.curvature_apply(cache, g, t)
        self.compare("curvature_apply vs pull_hessian", applied, np.einsum("bmij,kbj->bmki", curv, t))

        if batch >= 2:
            with self.calling("batch_slice"):
                part = layer.batch_slice(1, batch)
                part.check_batch(batch - 1)
                y_part = part.forward(x[1:])[0]
            self.compare("batch_slice(1, batch) forward vs rows 1: of forward", y_part, y[1:])

        self._map_arrays(layer, x, y)

        names = list(layer.parameters())
        v = {name: rng.standard_normal((_K, *np.shape(a))) for name, a in layer.parameters().items()}
        gd = rng.standard_normal((batch, _M, _K, p))
        inputs = _Inputs(g=g, h=h, t=t, gd=gd, v=v, results={})
        inputs.results = self.direct_calls(layer, x, inputs, names)
        return inputs

    def _map_arrays(self, layer: Layer, x: np.ndarray, y: Any) -> None:
        """``map_arrays`` visits each array of ``arrays()`` and gives a layer that computes the same."""
        seen: list[str] = []

        def copied(name: str, a: Any) -> Any:
            seen.append(name)
            return np.array(a, copy=True)

        with self.calling("map_arrays"):
            clone = layer.map_arrays(copied)
            y_clone = clone.forward(x)[0]
        listed = sorted(name for name, _ in layer.arrays())
        if sorted(seen) != listed:
            self.fail("map_arrays", f"called fn for {sorted(seen)}, but arrays() lists {listed}")
        self.compare("forward of map_arrays(copy) vs forward", y_clone, y)

    def _contract_factor(self, f: int, factor: Any, k: int, batch: int, m: int) -> np.ndarray:
        """One factor of ``push`` as its ``(B, m, k, k)`` term, with its shapes checked."""
        if isinstance(factor, Contracted):
            term = _host(factor.term)
            if term.shape != (batch, m, k, k):
                self.fail(
                    "push with adjoints", f"Contracted term {f} has shape {term.shape}, expected {(batch, m, k, k)}"
                )
            return term
        if not isinstance(factor, tuple) or len(factor) != 3:
            self.fail("push with adjoints", f"factor {f} is {type(factor).__name__}, not a triple (L, c, R)")
        left, c, right = (_host(a) for a in factor)
        r = left.shape[-1] if left.ndim == 3 else -1
        if left.shape != (k, batch, r) or c.shape != (batch, m, r) or right.shape != (k, batch, r):
            self.fail(
                "push with adjoints",
                f"factor {f} has shapes {left.shape}, {c.shape}, {right.shape}; expected (k, B, r), (B, m, r), "
                f"(k, B, r) with k={k}, B={batch}, m={m}",
            )
        return np.einsum("kbr,bmr,lbr->bmkl", left, c, right)

    def _fresh_result(self, layer: Layer, x: np.ndarray, g: np.ndarray) -> None:
        """``pull_hessian`` returns a new, writable array: the reverse mode writes into it."""
        with self.calling("pull_hessian"):
            cache = layer.forward(x)[1]
            first = layer.pull_hessian(cache, g, None)
        if not isinstance(first, np.ndarray):
            return
        if not first.flags.writeable:
            self.fail("pull_hessian returns a new array", "it returned a read-only array")
        kept = first.copy()
        first[...] = np.nan
        with self.calling("pull_hessian"):
            again = layer.pull_hessian(cache, g, None)
        self.compare("pull_hessian returns a new array (not one the layer keeps)", again, kept)

    # -- the direct calls, in any library ---------------------------------------------------------

    def direct_calls(
        self,
        layer: Layer,
        x: Any,
        inp: _Inputs,
        names: list[str],
        xp: Any = np,
        where: str = "",
        check: Callable[[str, Any], None] | None = None,
    ) -> dict[str, Any]:
        """The results of every method of the contract, by name, for ``x`` and ``inp`` already in
        ``x``'s library (``xp``); ``where`` is appended to the part named in a failure, and
        ``check(name, result)`` sees each result as soon as it is made."""
        out = _Results(check)
        self.where = where
        try:
            self._direct_calls(layer, x, inp, names, xp, out)
        finally:
            self.where = ""
        return out

    def _direct_calls(self, layer: Layer, x: Any, inp: _Inputs, names: list[str], xp: Any, out: dict) -> None:
        with self.calling("forward"):
            y, cache = layer.forward(x)
        out["forward"] = y
        with self.calling("push"):
            out["push"] = layer.push(cache, inp.t)[0]
        with self.calling("push with adjoints"):
            t_out, factors = layer.push(cache, inp.t, inp.g)
        out["push with adjoints"] = t_out
        # The factors themselves may differ between libraries (a NumPy kernel contracts them):
        # their sum is compared, each array's library, dtype and device checked.
        total = None
        for f, factor in enumerate(factors):
            parts = [factor.term] if isinstance(factor, Contracted) else list(factor)
            for j, a in enumerate(parts):
                out[f"push with adjoints: factor {f}[{j}] (kind only)"] = a
            with self.calling(f"push with adjoints: factor {f}"):
                term = contract(xp, factor, "full")
            total = term if total is None else total + term
        out["push with adjoints: curvature"] = total
        with self.calling("pull"):
            out["pull"] = layer.pull(cache, inp.g)
        for key, g, h in (
            ("pull_hessian", inp.g, None),
            ("pull_hessian with h", inp.g, inp.h),
            ("pull_hessian with g=None", None, inp.h),
        ):
            with self.calling("pull_hessian"):
                out[key] = layer.pull_hessian(cache, g, h)
        with self.calling("curvature_apply"):
            out["curvature_apply"] = layer.curvature_apply(cache, inp.g, inp.t)
        with self.calling("constant_jacobian"):
            out["constant_jacobian"] = layer.constant_jacobian(cache)
        if not names:
            return
        for name in names:
            with self.calling(f"param_owner({name!r})"):
                o = _Owned.find(layer, cache, name, y)
                g_owner = o.pull(inp.g)
            with self.calling(f"param_gradient({name!r})"):
                out[f"param_gradient({name!r})"] = o.owner.param_gradient(o.cache, o.local, g_owner, True)
                out[f"param_gradient({name!r}, summed)"] = o.owner.param_gradient(o.cache, o.local, g_owner, False)
            with self.calling(f"param_hessian({name!r})"):
                h_owner = o.pull_hessian(inp.g, xp, x)
                out[f"param_hessian({name!r})"] = o.owner.param_hessian(o.cache, o.local, h_owner, True)
                out[f"param_hessian({name!r}, summed)"] = o.owner.param_hessian(o.cache, o.local, h_owner, False)
        with self.calling("push_params"):
            out["push_params"] = layer.push_params(cache, inp.t, inp.v)
        with self.calling("curvature_apply_params"):
            out["curvature_apply_params"] = layer.curvature_apply_params(cache, inp.g, inp.t, inp.v)
        with self.calling("param_second"):
            second = layer.param_second(cache, inp.g, inp.gd, inp.t, inp.v)
            gauss_newton = layer.param_second(cache, None, inp.gd, inp.t, inp.v)
        for name in names:
            out[f"param_second({name!r})"] = second.get(name)
            out[f"param_second({name!r}, g=None)"] = gauss_newton.get(name)

    # -- parameters -----------------------------------------------------------------------------------

    def parameter_checks(self, layer: Layer, x: np.ndarray, inp: _Inputs, rng: np.random.Generator) -> None:
        params = layer.parameters()
        names = []
        for name, a in params.items():
            if isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.writeable and a.size:
                index = (0,) * a.ndim  # does a change show in parameters()? (not if it returns copies)
                old = a[index]
                a[index] = old + 1.0
                held = layer.parameters()[name][index] == old + 1.0
                a[index] = old
                if held:
                    names.append(name)
                    continue
            self.report.skipped.append(
                f"parameter {name!r}: parameters() does not return an array the layer holds; it cannot be perturbed"
            )
        if not names:
            return
        res, g = inp.results, inp.g

        def gradients(xx: np.ndarray, gg: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            """Output and per-sample parameter gradients of ``gg · y`` at ``xx`` and the current
            parameters."""
            with self.calling("forward"):
                y, cache = layer.forward(xx)
            grads = {}
            for name in names:
                with self.calling(f"param_owner({name!r})"):
                    o = _Owned.find(layer, cache, name, y)
                    g_owner = o.pull(gg)
                with self.calling(f"param_gradient({name!r})"):
                    grads[name] = _host(o.owner.param_gradient(o.cache, o.local, g_owner, True))
            return _host(y), grads

        owners = {}
        with self.calling("forward"):
            y, cache = layer.forward(x)
        for name in names:
            with self.calling(f"param_owner({name!r})"):
                o = _Owned.find(layer, cache, name, y)
            self.compare(
                f"param_owner({name!r}): downstream layers applied to the owner's output vs forward", o.y_end, y
            )
            owners[name] = o.owner

        # Entry by entry: d(g·y)/dθ and d(param_gradient)/dθ.
        for b in names:
            theta = params[b]
            fd_value = np.empty((*g.shape[:2], *theta.shape))
            fd_grad = {a: np.empty((*res[f"param_gradient({a!r})"].shape, *theta.shape)) for a in names}
            for index in np.ndindex(theta.shape):
                old = theta[index]
                step = self.eps * (1.0 + abs(old))
                try:
                    theta[index] = old + step
                    y_plus, g_plus = gradients(x, g)
                    theta[index] = old - step
                    y_minus, g_minus = gradients(x, g)
                finally:
                    theta[index] = old
                sel = (Ellipsis, *index)
                fd_value[sel] = np.sum(g * (y_plus - y_minus)[:, None, :], axis=-1) / (2 * step)
                for a in names:
                    fd_grad[a][sel] = (g_plus[a] - g_minus[a]) / (2 * step)
            self.compare(
                f"param_gradient({b!r}) vs finite differences of forward", res[f"param_gradient({b!r})"], fd_value
            )
            self.compare(
                f"param_gradient({b!r}, per_sample=False) vs the sum of its per-sample values",
                res[f"param_gradient({b!r}, summed)"],
                np.sum(_host(res[f"param_gradient({b!r})"]), axis=(0, 1)),
            )
            for a in names:
                if owners[a] is not owners[b]:
                    continue  # blocks between layers come from parameter-space products
                with self.calling(f"param_hessian({a!r}, {b!r})"):
                    o = _Owned.find(layer, cache, a, y)
                    local_b = layer.param_owner(cache, b, y)[2]
                    h_owner = o.pull_hessian(g, np, x)
                    block = o.owner.param_hessian(o.cache, o.local, h_owner, True, local_b)
                    summed = o.owner.param_hessian(o.cache, o.local, h_owner, False, local_b)
                self.compare(f"param_hessian({a!r}, {b!r}) vs finite differences of param_gradient", block, fd_grad[a])
                self.compare(
                    f"param_hessian({a!r}, {b!r}, per_sample=False) vs the sum of its per-sample values",
                    summed,
                    np.sum(_host(block), axis=(0, 1)),
                )

        # Along random directions of the input and every parameter at once.
        batch, n = x.shape
        scale = max([float(np.max(np.abs(x)))] + [float(np.max(np.abs(params[a]))) for a in names])
        step = self.eps * (1.0 + scale)
        fd_push, fd_pull = [], []
        fd_second: dict[str, list] = {a: [] for a in names}
        for k in range(_K):
            found = []
            for sign in (1.0, -1.0):
                olds = {a: params[a].copy() for a in names}
                try:
                    for a in names:
                        params[a] += sign * step * inp.v[a][k]
                    xx = x + sign * step * inp.t[k]
                    with self.calling("forward"):
                        y, cache = layer.forward(xx)
                    with self.calling("pull"):
                        pulled = _host(layer.pull(cache, g))
                    _, grads = gradients(xx, g + sign * step * inp.gd[:, :, k, :])
                finally:
                    for a in names:
                        params[a][...] = olds[a]
                found.append((_host(y), pulled, grads))
            (y_p, pull_p, grad_p), (y_m, pull_m, grad_m) = found
            fd_push.append((y_p - y_m) / (2 * step))
            fd_pull.append((pull_p - pull_m) / (2 * step))
            for a in names:
                fd_second[a].append(np.sum(grad_p[a] - grad_m[a], axis=(0, 1)) / (2 * step))
        self.compare("push_params vs finite differences of forward", res["push_params"], np.stack(fd_push))
        self.compare(
            "curvature_apply_params vs finite differences of pull",
            res["curvature_apply_params"],
            np.stack(fd_pull, axis=2),
        )
        for a in names:
            self.compare(
                f"param_second({a!r}) vs finite differences of param_gradient",
                res[f"param_second({a!r})"],
                np.stack(fd_second[a]),
            )
            # g = None: the derivative of the gradient is that of the adjoints alone (linear in them).
            want = []
            for k in range(_K):
                _, grads = gradients(x, inp.gd[:, :, k, :])
                want.append(np.sum(grads[a], axis=(0, 1)))
            self.compare(
                f"param_second({a!r}, g=None) vs param_gradient of gd",
                res[f"param_second({a!r}, g=None)"],
                np.stack(want),
            )

    # -- the engine on chains around the layer ------------------------------------------------------

    def chain_checks(self, layer: Layer, x: np.ndarray, rng: np.random.Generator) -> None:
        batch, n = x.shape
        p = layer.out_width(n)
        after = [] if layer.scalar_output else [Dense(rng.standard_normal((2, p)) / np.sqrt(p))]
        before = Dense(np.eye(n) + rng.standard_normal((n, n)) / np.sqrt(n))
        v = rng.standard_normal((batch, _K, n))
        for label, chain in (("[layer, Dense]", [layer, *after]), ("[Dense, layer, Dense]", [before, layer, *after])):
            if layer.scalar_output:
                label = label.replace(", Dense]", "]")
            with self.calling(f"reverse mode in the chain {label}"):
                _, jac_r, hess_r = reverse_mode(chain, x, True)
            with self.calling(f"forward mode in the chain {label}"):
                _, jac_f, hess_f = forward_mode(chain, x, True)
            self.compare(f"forward-mode vs reverse-mode Jacobian in the chain {label}", jac_f, jac_r)
            self.compare(f"forward-mode vs reverse-mode Hessian in the chain {label}", hess_f, hess_r)
            with self.calling(f"Hessian diagonal in the chain {label}"):
                diag = curvature.hessian_part(chain, x, "diag")[1]
            self.compare(
                f"Hessian diagonal vs reverse-mode Hessian in the chain {label}",
                diag,
                np.diagonal(_host(hess_r), axis1=-2, axis2=-1),
            )
            with self.calling(f"Laplacian in the chain {label}"):
                trace = curvature.hessian_part(chain, x, "trace")[1]
            self.compare(
                f"Laplacian vs reverse-mode Hessian in the chain {label}",
                trace,
                np.trace(_host(hess_r), axis1=-2, axis2=-1),
            )
            with self.calling(f"Hessian-vector product in the chain {label}"):
                hv = curvature.hvp(chain, x, v)[1]
            self.compare(
                f"Hessian-vector product (curvature_apply) vs reverse-mode Hessian in the chain {label}",
                hv,
                np.einsum("bmij,bkj->bmki", _host(hess_r), v),
            )

    # -- array_api_strict ---------------------------------------------------------------------------

    def strict_checks(self, twin64: Layer, x: np.ndarray, inp: _Inputs) -> None:
        """The direct calls on ``array_api_strict`` copies of the float64 twin ``twin64``."""
        try:
            import array_api_strict as xps
        except ImportError:
            self.report.skipped.append("array_api_strict run: array_api_strict is not installed")
            return
        names = list(twin64.parameters())
        for dtype, where in ((xps.float64, None), (xps.float64, "device1"), (xps.float32, "device1")):
            dev = xps.Device() if where is None else xps.Device(where)
            label = f"array_api_strict {'float64' if dtype == xps.float64 else 'float32'}"
            label += "" if where is None else f" on {where!r}"

            def convert(a: np.ndarray, dtype: Any = dtype, dev: Any = dev) -> Any:
                out = xps.asarray(a, device=dev)
                return xps.astype(out, dtype) if xps.isdtype(out.dtype, "real floating") else out

            def held(a: Any, dev: Any = dev) -> Any:  # the layer's own arrays: float64 stays float64
                return xps.asarray(_host(a), device=dev)

            strict_layer = _rebuild(twin64, held, {})
            xs = convert(x)
            strict_inp = _Inputs(
                g=convert(inp.g),
                h=convert(inp.h),
                t=convert(inp.t),
                gd=convert(inp.gd),
                v={k: convert(a) for k, a in inp.v.items()},
                results={},
            )

            def kind(key: str, got: Any, label: str = label, dtype: Any = dtype, dev: Any = dev) -> None:
                part = f"{key.removesuffix(' (kind only)')} on {label}"
                if type(got).__module__.split(".")[0] != "array_api_strict":
                    self.fail(
                        part, f"returned a {type(got).__module__}.{type(got).__name__}, not an array_api_strict array"
                    )
                if got.dtype != dtype:
                    self.fail(part, f"returned dtype {got.dtype}, expected {dtype} (that of x)")
                if got.device != dev:
                    self.fail(part, f"returned an array on device {got.device}, expected {dev} (that of x)")

            results = self.direct_calls(strict_layer, xs, strict_inp, names, xps, f" on {label}", kind)
            for key, got in results.items():
                want = inp.results.get(key)
                if key.endswith("(kind only)") or got is None and want is None or dtype != xps.float64:
                    continue
                got = None if got is None else _host(got.to_device(xps.Device()))
                self.compare(f"{key} on {label} vs NumPy", got, np.zeros(got.shape) if want is None else want)
            self.report.checked[f"library, dtype and device of every result on {label}"] = 0.0
