"""Hypothesis strategies for random architectures (helper module, not tests).

Structure (depth, widths, layer kinds, terminal layer, parameter to differentiate, chunk size)
is drawn by Hypothesis; array values come from a NumPy generator seeded by a drawn integer.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

#: Whether the tests run in CI (the ``CI`` environment variable set, as CI services do): there
#: Hypothesis draws the same examples on every run (:data:`HYPOTHESIS_SEED` fixed, and the
#: profile in ``conftest.py`` derandomized).
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")

#: One seed for every Hypothesis test of a session, so that the tests parametrized over
#: backends draw the same examples and share cached references; set
#: HESSARRAY_HYPOTHESIS_SEED to repeat a session. Random per session, except in CI (0).
HYPOTHESIS_SEED = int(os.environ.get("HESSARRAY_HYPOTHESIS_SEED") or (0 if IN_CI else random.randrange(2**32)))

#: activations that keep values bounded or grow at most linearly
MILD = ["tanh", "sigmoid", "softplus", "relu", "leaky_relu", "elu", "silu", "logcosh", "sin", "cos", "identity", "user"]
#: activations that can make values grow fast; at most MAX_GROWING per model
GROWING = ["exp", "square", "power"]
MAX_GROWING = 2
#: activations whose outputs are strictly positive (a non-integer power may follow them)
POSITIVE = {"exp", "sigmoid", "softplus"}


@dataclass
class Arch:
    spec: list
    x: np.ndarray
    wrt: str | None
    chunk_size: int | None

    def __repr__(self) -> str:
        from reference import describe

        return f"Arch([{describe(self.spec)}], x{self.x.shape}, wrt={self.wrt!r}, chunk_size={self.chunk_size})"


class _Budget:
    def __init__(self):
        self.growing = 0


def _activation(draw, rng, prev_positive: bool, budget: _Budget) -> tuple:
    names = MILD + (GROWING if budget.growing < MAX_GROWING else [])
    name = draw(st.sampled_from(names))
    if name in GROWING:
        budget.growing += 1
    if name == "softplus":
        return ("act", name, draw(st.sampled_from([1.0, 0.5, 3.0])))
    if name == "leaky_relu":
        return ("act", name, draw(st.sampled_from([0.01, 0.2, -0.5])))
    if name == "elu":
        return ("act", name, draw(st.sampled_from([1.0, 0.3, 2.0])))
    if name == "power":
        # integer p >= 2 anywhere; a non-integer p only on strictly positive inputs
        choices = [2.0, 3.0, 4.0] + ([2.5, 3.5] if prev_positive else [])
        return ("act", name, draw(st.sampled_from(choices)))
    return ("act", name)


def _dense(draw, rng, n_in: int, n_out: int) -> tuple:
    W = rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    bias = draw(st.sampled_from(["none", "row", "column"]))
    b = None if bias == "none" else rng.standard_normal((n_out,) if bias == "row" else (n_out, 1)) * 0.5
    return ("dense", W, b)


def _chain(draw, rng, width: int, depth: int, budget: _Budget, nest: int, fixed_width: bool) -> tuple[list, int]:
    spec: list = []
    positive = False
    for _ in range(depth):
        kinds = ["dense", "act", "act"] + (["residual"] if nest < 2 else [])
        kind = draw(st.sampled_from(kinds))
        if kind == "dense":
            out = width if fixed_width else draw(st.integers(1, 16))
            spec.append(_dense(draw, rng, width, out))
            width, positive = out, False
        elif kind == "act":
            item = _activation(draw, rng, positive, budget)
            spec.append(item)
            positive = item[1] in POSITIVE
        else:
            inner, _ = _chain(draw, rng, width, draw(st.integers(1, 3)), budget, nest + 1, True)
            h = draw(st.sampled_from([1.0, 0.5, -0.3]))
            spec.append(("residual", h, inner))
            positive = False
    return spec, width


@st.composite
def architectures(draw, terminals=("none", "sum", "mse", "mse_shared", "ce_int", "ce_onehot", "ce_prob")):
    """A random model spec with its input, a parameter name (or None) and a chunk size."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = draw(st.integers(1, 6))
    batch = draw(st.integers(1, 7))
    depth = draw(st.integers(1, 5))
    spec, m = _chain(draw, rng, d, depth, _Budget(), 0, False)
    terminal = draw(st.sampled_from(terminals))
    if terminal == "sum":
        spec.append(("sum",))
    elif terminal == "mse":
        spec.append(("mse", rng.standard_normal((batch, m))))
    elif terminal == "mse_shared":
        spec.append(("mse", rng.standard_normal(m)))
    elif terminal == "ce_int":
        spec.append(("ce", rng.integers(0, m, size=batch)))
    elif terminal == "ce_onehot":
        spec.append(("ce", np.eye(m)[rng.integers(0, m, size=batch)]))
    elif terminal == "ce_prob":
        spec.append(("ce", rng.dirichlet(np.ones(m), size=batch)))
    x = rng.standard_normal((batch, d))
    from reference import param_arrays

    names = list(param_arrays(spec))
    wrt = draw(st.sampled_from(names)) if names else None
    chunk_size = draw(st.sampled_from([None, 1, 2, 3]))
    return Arch(spec, x, wrt, chunk_size)
