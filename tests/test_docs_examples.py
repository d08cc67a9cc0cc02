"""The Python examples of ``docs/layers.md`` run, so the documented layer contract cannot go stale.

Every ```` ```python ```` block of the page is executed, in order, in one namespace (the
``Gaussian`` activation, the ``Quadratic`` layer, the model built from it and the checks of
"Checking a new layer"). Tracebacks point at the lines of ``docs/layers.md``. The example layer
is then also run where the page's small model does not reach: many directions (the batched-GEMM
contraction), parameter-space products and ``array_api_strict``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import hessarray as ha
from hessarray.tuning import SMALL_K

LAYERS_MD = Path(__file__).resolve().parent.parent / "docs" / "layers.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line, code)`` of each ```` ```python ```` block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)]


@pytest.fixture(scope="module")
def namespace() -> dict:
    """The names the page's examples define, after running all of them in order."""
    ns: dict = {"__name__": "docs_layers_md"}
    for line, code in python_blocks(LAYERS_MD):
        # Pad so that line numbers in tracebacks are those of the Markdown file.
        exec(compile("\n" * (line - 1) + code, str(LAYERS_MD), "exec"), ns)
    return ns


def test_page_has_the_examples():
    codes = [code for _, code in python_blocks(LAYERS_MD)]
    for marker in ("class Gaussian(", "class Quadratic(ha.Layer)", "model = ha.Sequential(", 'mode="forward"'):
        assert any(marker in code for code in codes), f"no python block of docs/layers.md contains {marker!r}"


def test_examples_run(namespace):
    assert namespace["H"].shape == (7, 2, 2)
    assert namespace["H_W"].shape == (3, 2, 3, 2)
    assert isinstance(namespace["model"][2], namespace["Quadratic"])


def quadratic_model(ns: dict, d: int, asarray=np.asarray) -> ha.Sequential:
    """Dense, the page's ``Gaussian``, its ``Quadratic``, Tanh, Dense: two outputs."""
    rng = np.random.default_rng(d)
    A = rng.standard_normal((3, 4, 4))
    W0, W4 = rng.standard_normal((4, d)), rng.standard_normal((2, 3))
    return ha.Sequential(
        ha.Dense(asarray(W0)),
        ns["Gaussian"](0.8),
        ns["Quadratic"](asarray(A + np.transpose(A, (0, 2, 1)))),
        ha.Tanh(),
        ha.Dense(asarray(W4)),
    )


def assert_close(actual, desired):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d", [max(SMALL_K, 1), SMALL_K + 4], ids=["few-directions", "many-directions"])
def test_quadratic_layer_in_every_computation(namespace, d):
    model = quadratic_model(namespace, d)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, d))
    H = ha.hessian(model, x, mode="forward")  # Quadratic.push's triples, contracted
    assert H.shape == (5, 2, d, d)
    assert_close(H, ha.hessian(model, x, mode="reverse"))
    assert_close(ha.hessian_diagonal(model, x), np.diagonal(H, axis1=-2, axis2=-1))
    assert_close(ha.laplacian(model, x), np.trace(H, axis1=-2, axis2=-1))
    v = rng.standard_normal((5, d, 3))
    assert_close(ha.hvp(model, x, v), H @ v[:, None])


def test_quadratic_layer_in_parameter_space(namespace):
    """The default push_params, curvature_apply_params and param_second over the example's methods."""
    model = quadratic_model(namespace, 3)
    x = np.random.default_rng(2).standard_normal((6, 3))
    layer = ha.parameter_hessian(model, x)  # Hessian backpropagation: forward mode of the rest
    full = ha.parameter_hessian(model, x, blocks="full")  # parameter-space Hessian-vector products
    assert set(layer) <= set(full)
    for key, block in layer.items():
        assert_close(full[key], block)


def test_quadratic_layer_uses_only_the_standard(namespace):
    xps = pytest.importorskip("array_api_strict")
    x = np.random.default_rng(3).standard_normal((4, 3))
    model = quadratic_model(namespace, 3, asarray=xps.asarray)
    H = ha.hessian(model, xps.asarray(x), mode="forward")
    assert_close(H, ha.hessian(quadratic_model(namespace, 3), x, mode="forward"))
    assert_close(ha.hvp(model, xps.asarray(x), xps.asarray(x)), ha.hvp(quadratic_model(namespace, 3), x, x))
