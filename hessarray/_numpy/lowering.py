"""A model's lowered steps (:mod:`hessarray.layers.lowered`) as the flat program the compiled
network kernel runs (:mod:`.network`).

The kernel holds a tile's values, adjoints and tangents in numbered *slots* (rows of three
buffers). Each instruction reads one slot and writes one; a residual block keeps its input's
slot (the skip) until the block's ``ADD`` writes the sum into it. A slot freed by a dense
step is reused by a later one, so a deep MLP needs two slots. One row of :attr:`Program.ops`
per instruction, columns :data:`OP` … :data:`VALUE`:

- ``AFFINE``: ``slot[DST] = slot[SRC] Wᵀ (+ b)``; ``SRC = -1`` reads the input. Where a
  pointwise step follows on its output, the bias is added there (``BIAS = -1`` here).
- ``POINTWISE``: ``slot[SRC] = φ(slot[SRC] + b)`` in place, keeping ``φ'`` and ``φ''`` in the
  activation's rows (``ACT``). Where they are functions of the output
  (:func:`.pointwise.from_output`), ``φ`` goes instead to a value row of its own (``KEEP``),
  kept for the later passes, which derive ``φ'`` and ``φ''`` from it. ``SEEDED``: its input's
  tangents are the same for every sample, the program's seed (``1``) or the identity (``2``),
  and are never formed.
- ``ADD``: ``slot[DST] += h · slot[SRC]``, a residual block's end.
- ``COPY``: ``slot[DST] = slot[SRC]`` (``SRC = -1``: the input, tangents the seed's where ``SEED = 0``).

``ACC`` marks an instruction whose adjoint adds to its input slot's (a skip's, which the
block's ``ADD`` has already given one). ``VALUE``: the row of the values buffer an instruction
reads its input's value from, ``SRC`` itself unless that value is a kept output; the kept rows
follow the slots' (row ``slots + ACT``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy

from ..layers.lowered import Affine, Block, Pointwise, SquaredError, Total

AFFINE, POINTWISE, ADD, COPY = 0, 1, 2, 3
OP, DST, SRC, WEIGHT, BIAS, ACT, CODE, NIN, NOUT, ACC, SEED, SEEDED, CURVED, KEEP, VALUE = range(15)
COLUMNS = 15
INPUT = -1
#: How the program's value becomes the output: ``y = v g_lastᵀ + b_out`` (a dense layer, a
#: sum, or the value itself), or the mean squared error against a target.
LINEAR, SQUARED_ERROR = 0, 1


@dataclass
class Program:
    """What the kernel runs: instructions, constants and the arrays they index."""

    ops: Any  # (L, 13) int64
    fparams: Any  # (L, 2) float64: a pointwise step's constants, a block's h
    weights: list = field(default_factory=list)  # W (out, in), C-contiguous
    biases: list = field(default_factory=list)  # (n,)
    seed: Any = None  # (n, k): column i the tangent of direction i, shared by all samples
    slots: int = 0
    acts: int = 0
    width: int = 1
    final: int = 0  # the slot of the value the end reads
    final_value: int = 0  # the values row that holds it
    final_width: int = 1
    end: int = LINEAR
    g_last: Any = None  # (m, final_width)
    b_out: Any = None  # (m,)
    target: Any = None  # (1 or B, final_width)
    outputs: int = 1
    directions: int = 0  # k
    outer: Any = None  # (k, d): the input's map to the narrowed seeds, or None
    # Where each dense step's arrays go (in the order the steps come), so that a remembered
    # program takes a call's arrays (:meth:`with_arrays`) without being lowered again.
    affines: list = field(default_factory=list)  # (weight index, bias index or -1)
    folded: int = -1  # the weight index of a last dense step folded into g_last
    total: bool = False  # a Sum at the end
    seed_weight: int = -1  # the weight that is the seed (else the identity)
    # Whether an array is a copy of a layer's (another dtype or layout) or derived from one (a
    # sum's folded weight): then each call makes them again (:meth:`with_arrays`).
    copies: bool = False
    kernel_args: Any = None  # the padded tuples the kernel takes (:func:`.network.run`)

    def with_arrays(self, layers: list) -> Program:
        """This program with ``layers``' current arrays, so that a call sees a layer's arrays as
        they are now, written in place or not. Where the program holds the layers' own arrays
        (C-contiguous, of its dtype) it is itself; else the steps are lowered again (cheap) and
        the copies made from them."""
        if not self.copies:
            return self
        dtype = self.g_last.dtype
        steps: list = []
        for layer in layers:
            steps.extend(layer.lower())
        affines = list(_affine_steps(steps))
        weights, biases = list(self.weights), list(self.biases)
        for (w_at, b_at), step in zip(self.affines, affines):
            weights[w_at] = kernel_array(step.weight, dtype=dtype)
            if b_at >= 0:
                biases[b_at] = kernel_array(step.bias, dtype=dtype)
        out = copy.copy(self)
        out.weights, out.biases, out.kernel_args = weights, biases, None
        if self.seed_weight >= 0:
            out.seed = weights[self.seed_weight]
        if self.outer is not None:
            out.outer = weights[self.affines[0][0]]
        if self.end == SQUARED_ERROR:
            out.target = kernel_array(steps[-1].target, dtype=dtype).reshape(-1, self.final_width)
        elif self.folded >= 0:
            b_at = self.affines[-1][1]
            w = weights[self.folded]
            b = biases[b_at] if b_at >= 0 else numpy.zeros(w.shape[0], dtype)
            if self.total:
                w, b = w.sum(axis=0, keepdims=True), b.sum(keepdims=True)
            out.g_last, out.b_out = kernel_array(w), kernel_array(b)
        return out


def _affine_steps(steps: Any) -> Any:
    """The dense steps of ``steps``, depth first (the order the builder meets them)."""
    for step in steps:
        if isinstance(step, Affine):
            yield step
        elif isinstance(step, Block):
            yield from _affine_steps(step.body)


def kernel_array(a: Any, dtype: Any = None) -> Any:
    """``a`` as a C-contiguous, writeable NumPy array of ``dtype`` (a copy only where it is not):
    numba indexes a tuple by a loop variable only if its items share one type, writeability
    included, and compiles a kernel apart for each new type."""
    if a.flags.c_contiguous and a.flags.writeable and (dtype is None or a.dtype == dtype):
        return a
    return numpy.array(a, dtype=dtype, order="C")


class _Builder:
    def __init__(self, dtype: Any, d: int, pointwise_codes: dict[str, int], from_output: Callable) -> None:
        self.dtype, self.d, self.codes, self.from_output = dtype, d, pointwise_codes, from_output
        self.rows: list[list[int]] = []
        self.fparams: list[tuple[float, float]] = []
        self.prog = Program(ops=None, fparams=None)
        self.free: list[int] = []
        self.held: set[int] = set()
        self.zero_bias: dict[int, int] = {}
        # Slots whose value is a kept output, and that output's row (:func:`kept_row`).
        self.value_at: dict[int, int] = {}
        self.width = d

    def array(self, a: Any) -> Any | None:
        """``a`` as a C-contiguous NumPy array of the program's dtype, ``None`` for another library's."""
        if type(a) is not numpy.ndarray:
            return None
        out = kernel_array(a, dtype=self.dtype)
        self.prog.copies |= out is not a
        return out

    def slot(self) -> int:
        if self.free:
            return self.free.pop()
        self.prog.slots += 1
        return self.prog.slots - 1

    def release(self, s: int) -> None:
        if s != INPUT and s not in self.held:
            self.free.append(s)

    def emit(self, op: int, dst: int, src: int, nin: int, nout: int, params=(0.0, 0.0), **cols: int) -> list[int]:
        row = [0] * COLUMNS
        row[OP], row[DST], row[SRC], row[NIN], row[NOUT] = op, dst, src, nin, nout
        row[WEIGHT] = row[BIAS] = row[SEED] = row[KEEP] = -1
        row[VALUE] = self.value_at.get(src, src)
        if op != POINTWISE:  # written in place from here on
            self.value_at.pop(dst, None)
        for name, value in cols.items():
            row[globals()[name]] = value
        self.rows.append(row)
        self.fparams.append(tuple(params) + (0.0,) * (2 - len(params)))
        self.prog.width = max(self.prog.width, nin, nout)
        return row

    def bias_index(self, b: Any, n: int) -> int | None:
        if b is None:
            if n not in self.zero_bias:
                self.zero_bias[n] = len(self.prog.biases)
                self.prog.biases.append(numpy.zeros(n, self.dtype))
            return self.zero_bias[n]
        arr = self.array(b)
        if arr is None:
            return None
        self.prog.biases.append(arr)
        return len(self.prog.biases) - 1

    def copy_of(self, cur: int) -> int:
        """A fresh slot holding ``cur``'s value (the input, or a skip that must be kept)."""
        dst = self.slot()
        self.emit(COPY, dst, cur, self.width, self.width, ACC=int(cur in self.held))
        return dst

    def steps(self, steps: tuple, cur: int) -> int | None:
        for step in steps:
            if isinstance(step, Affine):
                w = self.array(step.weight)
                if w is None or w.ndim != 2 or w.shape[1] != self.width:
                    return None
                out = w.shape[0]
                b = self.bias_index(step.bias, out)
                if b is None:
                    return None
                self.prog.affines.append((len(self.prog.weights), -1 if step.bias is None else b))
                self.prog.weights.append(w)
                dst = self.slot()
                self.emit(
                    AFFINE,
                    dst,
                    cur,
                    self.width,
                    out,
                    WEIGHT=len(self.prog.weights) - 1,
                    BIAS=b,
                    ACC=int(cur in self.held),
                )
                self.release(cur)
                cur, self.width = dst, out
            elif isinstance(step, Pointwise):
                code = self.codes.get(step.name)
                if code is None or len(step.params) > 2:
                    return None
                keep = self.from_output(step.name, step.params)
                if cur == INPUT or cur in self.held or (cur in self.value_at and not keep):
                    cur = self.copy_of(cur)
                prev = self.rows[-1] if self.rows else None
                bias = None
                if prev is not None and prev[OP] == AFFINE and prev[DST] == cur:  # add the bias in the φ loop
                    bias, prev[BIAS] = prev[BIAS], -1
                if bias is None:
                    bias = self.bias_index(None, self.width)
                self.emit(
                    POINTWISE,
                    cur,
                    cur,
                    self.width,
                    self.width,
                    step.params,
                    BIAS=bias,
                    ACT=self.prog.acts,
                    CODE=code,
                    CURVED=int(step.curved),
                    KEEP=kept_row(self.prog.acts) if keep else -1,
                )
                if keep:
                    self.value_at[cur] = kept_row(self.prog.acts)
                self.prog.acts += 1
            elif isinstance(step, Block):
                if cur == INPUT or cur in self.held or cur in self.value_at:  # the sum is written in place
                    cur = self.copy_of(cur)
                skip, n = cur, self.width
                self.held.add(skip)
                body = self.steps(step.body, skip)
                if body is None or self.width != n or body == skip:
                    return None
                self.held.discard(skip)
                self.emit(ADD, skip, body, n, n, (step.h,))
                self.release(body)
                cur = skip
            else:
                return None
        return cur


def kept_row(act: int) -> int:
    """Activation ``act``'s kept output row, before the slots are counted (:func:`_rows`)."""
    return -2 - act


def _rows(at: int, slots: int) -> int:
    """A values row: a slot as it is, a kept output (:func:`kept_row`) after the slots."""
    return slots + (-2 - at) if at <= -2 else at


def lower_network(
    layers: list, x: Any, pointwise_codes: dict[str, int], from_output: Callable = lambda name, params: False
) -> Program | None:
    """The program of ``layers`` for NumPy input ``x`` ``(B, d)``, or ``None`` where a layer does
    not lower (:meth:`~hessarray.layers.base.Layer.lower`), a step is not known, or an array is
    not NumPy's. ``from_output(name, params)``: whether an activation's derivatives are
    computed from its output (:func:`.pointwise.from_output`)."""
    steps: list = []
    for layer in layers:
        lowered = layer.lower()
        if lowered is None:
            return None
        steps.extend(lowered)
    end = steps.pop() if steps and isinstance(steps[-1], Total | SquaredError) else None
    if any(isinstance(s, Total | SquaredError) for s in steps):
        return None
    dtype = x.dtype
    d = x.shape[1]
    build = _Builder(dtype, d, pointwise_codes, from_output)
    cur = build.steps(tuple(steps), INPUT)
    if cur is None:
        return None
    prog = build.prog
    rows = build.rows
    # The end: a last dense layer (and a sum) become the kernel's constant output gradient.
    folded = None
    if not isinstance(end, SquaredError) and rows and rows[-1][OP] == AFFINE and rows[-1][SRC] != INPUT:
        folded = rows.pop()
        build.fparams.pop()
        cur = folded[SRC]
        build.width = folded[NIN]
    if cur == INPUT:
        cur = build.copy_of(cur)
    n = build.width
    prog.final, prog.final_width = cur, n
    prog.final_value = folded[VALUE] if folded is not None else build.value_at.get(cur, cur)
    if isinstance(end, SquaredError):
        target = build.array(end.target)
        if target is None or target.shape[-1] != n:
            return None
        prog.end, prog.target = SQUARED_ERROR, target.reshape(-1, n)
        prog.g_last, prog.b_out, prog.outputs = numpy.zeros((1, n), dtype), numpy.zeros(1, dtype), 1
    else:
        prog.target = numpy.zeros((1, n), dtype)
        if folded is not None:
            w, b = prog.weights[folded[WEIGHT]], prog.biases[folded[BIAS]]
        else:
            w, b = numpy.eye(n, dtype=dtype), numpy.zeros(n, dtype)
        if folded is not None:
            prog.folded = folded[WEIGHT]
        prog.total = end is not None
        if end is not None:  # Total: Σ_o (W v + b)_o
            w, b = w.sum(axis=0, keepdims=True), b.sum(keepdims=True)
            prog.copies |= folded is not None
        prog.g_last, prog.b_out, prog.outputs = kernel_array(w), kernel_array(b), w.shape[0]
    _seed(build, rows, d)
    prog.slots = max(prog.slots, 1)
    prog.acts = max(prog.acts, 1)
    for row in rows:
        row[KEEP], row[VALUE] = _rows(row[KEEP], prog.slots), _rows(row[VALUE], prog.slots)
    prog.final_value = _rows(prog.final_value, prog.slots)
    prog.ops = numpy.array(rows, dtype=numpy.int64).reshape(-1, COLUMNS)
    prog.fparams = numpy.array(build.fparams, dtype=numpy.float64).reshape(-1, 2)
    for name in ("weights", "biases"):  # numba types no empty tuple
        items = getattr(prog, name)
        if not items:
            items.append(numpy.zeros((1, 1) if name != "biases" else 1, dtype))
    return prog


def _seed(build: _Builder, rows: list, d: int) -> None:
    """The tangents at the input: the identity of the input (``k = d`` directions), or of the
    first dense layer's output where that is narrower (``k = n``, mapped back by
    :attr:`Program.outer`). A pointwise step right after the first dense layer reads them as
    seeds shared by all samples; anywhere else they are formed per sample."""
    prog = build.prog
    first = rows[0]
    narrowed = first[OP] == AFFINE and first[NOUT] < d
    prog.directions = first[NOUT] if narrowed else d
    if narrowed:
        prog.outer = prog.weights[first[WEIGHT]]
        prog.seed = numpy.eye(first[NOUT], dtype=build.dtype)
        identity = True
    elif first[OP] == AFFINE:  # W₀'s columns
        prog.seed = prog.weights[first[WEIGHT]]
        prog.seed_weight = first[WEIGHT]
        identity = False
    else:  # COPY of the input
        prog.seed = numpy.eye(d, dtype=build.dtype)
        identity = True
    after = rows[1] if len(rows) > 1 else None
    if first[OP] == AFFINE and after is not None and after[OP] == POINTWISE and after[SRC] == first[DST]:
        after[SEEDED] = 2 if identity else 1
    else:
        first[SEED] = 0
