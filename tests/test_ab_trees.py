"""``asv_bench/ab_trees.py`` without timing: its cases, its copy of a tree, its command line."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import hessarray as ha

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ab_trees():
    spec = importlib.util.spec_from_file_location("ab_trees", REPO / "asv_bench" / "ab_trees.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case", ["b10", "resnet"])
def test_a_case_is_the_same_call_every_time(ab_trees, case, monkeypatch):
    """Both trees get the same weights and input: two builds give the same derivatives."""
    monkeypatch.setitem(ab_trees.CASES, "resnet", ("resnet", 2, 8, 5, "derivatives", 1.0))
    first, second = ab_trees._call(ha, case, "float64")(), ab_trees._call(ha, case, "float64")()
    np.testing.assert_array_equal(first.hessian, second.hessian)
    assert first.hessian.shape[0] == ab_trees.CASES[case][3]


def test_the_copy_is_made_once_per_source(ab_trees, tmp_path, monkeypatch):
    """The copied package (``hessarray_b``) is reused while its sources stay as they are."""
    monkeypatch.setattr(ab_trees.tempfile, "gettempdir", lambda: str(tmp_path))
    tree = tmp_path / "tree"
    (tree / "hessarray").mkdir(parents=True)
    (tree / "hessarray" / "__init__.py").write_text("X = 1\n")
    first = ab_trees._copy(str(tree))
    assert (Path(first) / "hessarray_b" / "__init__.py").read_text() == "X = 1\n"
    assert ab_trees._copy(str(tree)) == first
    (tree / "hessarray" / "__init__.py").write_text("X = 22\n")
    os.utime(tree / "hessarray" / "__init__.py", (1, 1))
    assert ab_trees._copy(str(tree)) != first


def test_the_tree_to_compare_with_is_required(ab_trees, capsys):
    with pytest.raises(SystemExit):
        ab_trees.main([])
    assert "required" in capsys.readouterr().err
