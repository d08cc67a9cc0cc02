"""``asv_bench/gpu_check.sh`` and its driver ``asv_bench/gpu_compare.py`` without a GPU.

``CUDA_VISIBLE_DEVICES=""`` hides every GPU, so these take the no-GPU paths on any machine
(on a GPU machine, too, rather than starting the whole GPU run). The comparison code itself
runs on the CPU at tiny sizes (``--cpu-smoke``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "asv_bench" / "gpu_check.sh"
DRIVER = REPO / "asv_bench" / "gpu_compare.py"


def no_gpu_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path / "out"), GPU_CHECK_DIR=str(tmp_path / "work"))
    env["PYTHON"] = sys.executable
    env.update(extra)
    (tmp_path / "out").mkdir()
    return env


def load_driver():
    spec = importlib.util.spec_from_file_location("gpu_compare", DRIVER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_compare", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_gpu_check_without_gpu_says_so_and_exits_0(tmp_path, hidden):
    env = no_gpu_env(tmp_path, CUDA_VISIBLE_DEVICES=hidden)
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no GPU here" in res.stdout and "hides every GPU" in res.stdout
    assert "skipped" in res.stdout
    assert (tmp_path / "out" / "gpu_check.log").exists()  # copies of its outputs in $OUT


def test_gpu_check_full_detection_without_gpu(tmp_path):
    """CuPy, torch and JAX asked (as on a machine with an NVIDIA driver): none sees a GPU."""
    env = no_gpu_env(tmp_path, GPU_CHECK_FULL_DETECT="1")
    res = subprocess.run(["bash", str(SCRIPT), "tests"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no GPU here" in res.stdout
    assert "GPU via torch:cuda" in res.stdout
    versions = (tmp_path / "out" / "versions.md").read_text()
    assert "| numpy |" in versions and "| hessarray |" in versions


def test_cpu_smoke_runs_the_comparison(tmp_path):
    work = tmp_path / "work"
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nbefore\n\n<!-- gpu-bench:begin -->\nold\n<!-- gpu-bench:end -->\n\nafter\n")
    cmd = [sys.executable, str(DRIVER), "compare", "report", "--cpu-smoke", "--cases", "pinn", "--dtypes", "float64"]
    res = subprocess.run(
        [*cmd, "--work", str(work), "--docs", str(docs)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    table = (work / "compare.md").read_text()
    for system in ("hessarray torch", "hessarray JAX (jit)", "JAX jit(vmap(hessian))", "torch.func vmap(hessian)"):
        assert f"| {system} | float64 |" in table  # torch and JAX are test dependencies
    assert "MISMATCH" not in table and "failed" not in table
    assert "skipped: CuPy needs a GPU" in table
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.rstrip().endswith("after")
    assert "old" not in text and text.count("<!-- gpu-bench:begin -->") == 1
    assert "CPU smoke run" in text


def test_asv_benchmarks_timed_without_asv(tmp_path):
    """The asv runner of the driver: NumPy timed, CuPy skipped where there is no GPU."""
    driver = load_driver()
    bench = r"^Kernels\.time_dense_push\(32\)"
    rc = driver.run_asv(tmp_path, ["numpy", "cupy"], budget=60, bench=bench, per_call=0.0, min_reps=1)
    assert rc == 0
    table = (tmp_path / "asv.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| Kernels.time_dense_push(32) |"))
    numpy_cell, cupy_cell = (c.strip() for c in row.split("|")[2:4])
    assert numpy_cell.endswith(("s", "ms", "µs")), row
    if driver.cupy_gpu() is not None:
        assert cupy_cell == "n/a", row


def test_section_replaces_in_place_or_appends(tmp_path):
    driver = load_driver()
    docs = tmp_path / "b.md"
    docs.write_text("# B\n\ntext\n")
    driver.write_section(f"{driver.BEGIN}\nnew\n{driver.END}\n", docs)
    assert docs.read_text() == f"# B\n\ntext\n\n{driver.BEGIN}\nnew\n{driver.END}\n"
    docs.write_text(f"# B\n{driver.BEGIN}\nold\n{driver.END}\ntail\n")
    driver.write_section(f"{driver.BEGIN}\nnew\n{driver.END}\n", docs)
    assert docs.read_text() == f"# B\n{driver.BEGIN}\nnew\n{driver.END}\ntail\n"
