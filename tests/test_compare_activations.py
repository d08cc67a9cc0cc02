"""``asv_bench/compare.py``'s activation axis and grid, and the asv benchmarks' executor and
activation parameters, at tiny sizes.

Every activation builds the same function in every installed system (the comparison's
correctness check, here at a tight tolerance), the grid's quick run writes only its own marked
section of the report (and its plot), and the NumPy-compiled executor can be forced off and
restored.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "asv_bench"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def compare():
    return _load("compare", BENCH / "compare.py")


@pytest.fixture(scope="module")
def peers(compare):
    """The installed peers that build a network from a Spec (hessQuik has no sin, silu)."""
    names = ("JAX jit(vmap(hessian))", "torch.func vmap(hessian)", "TensorFlow tf.function")
    found = [s for s in compare.make_systems() if s.name in names and not s.missing]
    if any(s.name.startswith("JAX") for s in found):
        import jax

        jax.config.update("jax_enable_x64", True)
    return found


def mixed_spec(compare, arch: str):
    """Every activation once, in one network (one compilation per system)."""
    rng = np.random.default_rng(0)
    d, w, acts = 3, 5, compare.ACTIVATIONS
    ops: list = [("dense", rng.standard_normal((w, d)) / 2, 0.1 * rng.standard_normal(w))]
    for act in acts:
        W, b = rng.standard_normal((w, w)) / 2, 0.1 * rng.standard_normal(w)
        ops += [("act", act), ("dense", W, b)] if arch == "MLP" else [("res", W, b, act, 0.5)]
    ops += [("dense", rng.standard_normal((1, w)) / 2, np.zeros(1)), ("sum",)]
    return compare.Spec(f"mixed {arch}", d, ops, w)


@pytest.mark.parametrize(("arch", "dtype"), [("MLP", np.float64), ("ResNet", np.float32)])
def test_every_system_builds_the_same_function(compare, peers, arch, dtype):
    if not peers:
        pytest.skip("no peer installed")
    spec = mixed_spec(compare, arch)
    x = np.random.default_rng(1).standard_normal((4, 3))
    model = compare.ha_model(spec, dtype)
    assert [type(layer).__name__ for layer in model.layers].count("Residual") == (5 if arch == "ResNet" else 0)
    ref = tuple(np.asarray(a, dtype=np.float64) for a in compare.ha.derivatives(model, x.astype(dtype)))
    for system in peers:
        built = system.build(spec, dtype)
        out = built.to_numpy(built.fn(built.to_input(x)))
        assert compare.rel_error(out, ref) < (1e-12 if dtype == np.float64 else 1e-5), system.name


def test_depths_match(compare):
    """Both networks of the grid have the same number of activations."""
    for arch in compare.ARCHS:
        ops = compare.act_spec(arch, "sin", 2, 4).ops
        acts = [op for op in ops if op[0] == "act" or (op[0] == "res" and op[3] == "sin")]
        assert len(acts) == compare.ACT_DEPTH


def test_compiled_flag_forced_off_and_restored(compare):
    ha = compare.ha
    before = compare.compiled_flags()
    assert "hessarray._numpy" in before
    model = compare.ha_model(compare.mlp_spec(2, 8), np.float64)
    x = np.zeros((16, 2))
    old = compare.set_compiled(False)
    try:
        assert not any(compare.compiled_flags().values())
        assert ha.plan(model, x).executor == "portable"
    finally:
        compare.set_compiled(old)
    assert compare.compiled_flags() == before


def test_quick_grid_writes_its_section(compare, tmp_path):
    pytest.importorskip("jax")
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        "# Benchmarks\n\nmain report\n\n<!-- activations:begin -->\nstale\n<!-- activations:end -->\n\n"
        "<!-- other:begin -->\nkept\n<!-- other:end -->\n"
    )
    plot = tmp_path / "act.png"
    argv = ["--quick", "--cases", "activations", "--activations", "silu", "--systems", "JAX"]
    argv += ["--write", "--markdown", str(docs), "--act-plot", str(plot)]
    assert compare.main(argv) == 0
    text = docs.read_text()
    assert "stale" not in text and "main report" in text and "<!-- other:begin -->\nkept" in text
    section = text.split("<!-- activations:begin -->", 1)[1].split("<!-- activations:end -->", 1)[0]
    assert "### float64" in section and "MISMATCH" not in section
    rows = [line for line in section.splitlines() if line.startswith("| silu |")]
    assert len(rows) == 2  # MLP and ResNet
    for row in rows:
        cells = row.strip("|").split("|")[2:]
        assert len(cells) == 1 + len(compare.SMALL_BATCHES_QUICK)
        for cell in cells:  # hessarray / peer = ratio (executor)
            assert "×" in cell and ("(portable)" in cell or "(numpy-compiled)" in cell), cell
    assert plot.stat().st_size > 0 and f"]({plot.name})" in section


def test_asv_executor_benchmarks(compare):
    """The asv benchmarks' executor parameter: forced and restored, or skipped as asv skips."""
    sys.path.insert(0, str(BENCH))
    try:
        from benchmarks import end_to_end, kernels
    finally:
        sys.path.remove(str(BENCH))
    before = compare.compiled_flags()
    ran = 0
    for params in [("portable", "sin", "mlp", "narrow"), ("portable", "tanh", "resnet", "narrow")] + [
        ("numpy-compiled", act, "mlp", "narrow") for act in ("tanh", "silu")
    ]:
        bench = end_to_end.Executors()
        try:
            bench.setup(*params)
        except NotImplementedError:
            assert params[0] == "numpy-compiled"  # the portable one always runs
            assert compare.compiled_flags() == before
            continue
        try:
            bench.time_derivatives(*params)
            ran += 1
            if params[0] == "portable":
                assert not any(compare.compiled_flags().values())
        finally:
            bench.teardown(*params)
        assert compare.compiled_flags() == before
    assert ran >= 2
    bench = kernels.CompiledNetwork()
    try:
        bench.setup(32, "tanh")
    except NotImplementedError:
        return
    try:
        bench.time_network(32, "tanh")
    finally:
        bench.teardown(32, "tanh")
