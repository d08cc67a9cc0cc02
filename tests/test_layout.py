"""Where NumPy-only code may live (issue 13, item 3).

All NumPy-only code is in ``hessarray/_numpy/``; the portable modules reach it only through
``hessarray/_delegation.py`` (and the executor registry, ``hessarray/engine/executors.py``).
The portable modules hold no NumPy branches: no ``xp is numpy``, no
``is_numpy_namespace``/``is_numpy_array``, no ``numpy.ndarray`` type tests. Read from the
source (``ast``): nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hessarray"

#: Where NumPy-only code belongs.
NUMPY_HOME = ("_numpy/", "_delegation.py")
#: Modules that may import ``hessarray._numpy``: the delegation module and the executor registry.
MAY_IMPORT_NUMPY_PACKAGE = {"_delegation.py", "engine/executors.py"}
#: Modules that use NumPy as a host tool (reading and writing ``.npz`` files, converting to and
#: from NumPy, moving arrays to the host, the self-check, Dask's object ``meta``): they tell
#: NumPy arrays apart on purpose, and may import ``numpy``.
HOST_TOOLS = {"io.py", "convert.py", "_transfer.py", "testing.py", "__main__.py", "_dask.py"}
#: Other modules that may import ``numpy``, and why: ``Dense``'s index tables of the packed
#: triangle (host integers, made once per width).
NUMPY_IMPORTERS = HOST_TOOLS | {"layers/dense.py"}

NUMPY_NAMES = {"numpy", "np"}
CHECKS = {"is_numpy_namespace", "is_numpy_array"}


def _modules() -> list[str]:
    names = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
    return [n for n in names if not n.startswith(NUMPY_HOME)]


def _tree(name: str) -> ast.Module:
    return ast.parse((PACKAGE / name).read_text(encoding="utf-8"), filename=name)


def _annotations(tree: ast.AST) -> set[int]:
    """ids of the nodes inside type annotations (a hint ``numpy.ndarray`` is no type test)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        hints = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
            hints = [a.annotation for a in every] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            hints = [node.annotation]
        for hint in hints:
            if hint is not None:
                inside.update(id(n) for n in ast.walk(hint))
    return inside


def _imported_modules(name: str, tree: ast.Module) -> set[str]:
    """Absolute names of the modules ``name`` imports (relative imports resolved)."""
    package = ["hessarray", *name.split("/")[:-1]]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def _numpy_branches(tree: ast.Module) -> list[str]:
    hints = _annotations(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Is, ast.IsNot)) for op in node.ops):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Name) and s.id in NUMPY_NAMES for s in sides):
                found.append(f"line {node.lineno}: `is numpy`")
        elif isinstance(node, ast.Attribute) and id(node) not in hints:
            if node.attr in CHECKS:
                found.append(f"line {node.lineno}: {node.attr}")
            elif node.attr == "ndarray" and isinstance(node.value, ast.Name) and node.value.id in NUMPY_NAMES:
                found.append(f"line {node.lineno}: numpy.ndarray")
        elif isinstance(node, ast.Name) and node.id in CHECKS:
            found.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.ImportFrom) and any(alias.name in CHECKS for alias in node.names):
            found.append(f"line {node.lineno}: imports {', '.join(a.name for a in node.names if a.name in CHECKS)}")
    return found


def test_the_modules_are_found():
    names = _modules()
    assert "_backend.py" in names and "layers/dense.py" in names and "engine/forward.py" in names
    assert not any(n.startswith("_numpy/") for n in names)


@pytest.mark.parametrize("name", [n for n in _modules() if n not in HOST_TOOLS])
def test_no_numpy_branches_in_portable_modules(name):
    found = _numpy_branches(_tree(name))
    assert not found, f"{name}: NumPy-only code belongs in hessarray/_numpy, via hessarray/_delegation: {found}"


@pytest.mark.parametrize("name", _modules())
def test_numpy_package_reached_only_through_delegation(name):
    if name in MAY_IMPORT_NUMPY_PACKAGE:
        return
    imported = _imported_modules(name, _tree(name))
    bad = sorted(m for m in imported if m == "hessarray._numpy" or m.startswith("hessarray._numpy."))
    assert not bad, f"{name} imports {bad}: reach NumPy's fast paths through hessarray._delegation"


@pytest.mark.parametrize("name", [n for n in _modules() if n.startswith("layers/")])
def test_layers_never_import_the_numpy_package(name):
    imported = _imported_modules(name, _tree(name))
    assert not any(m == "hessarray._numpy" or m.startswith("hessarray._numpy.") for m in imported)


@pytest.mark.parametrize("name", [n for n in _modules() if n not in NUMPY_IMPORTERS])
def test_portable_modules_do_not_import_numpy(name):
    imported = _imported_modules(name, _tree(name))
    assert not any(m == "numpy" or m.startswith("numpy.") for m in imported), (
        f"{name} imports numpy: NumPy fast paths belong in hessarray/_numpy (via hessarray/_delegation)"
    )


def test_the_checks_catch_numpy_branches():
    """The checks themselves: each pattern is found, annotations and docstrings are not."""
    code = (
        "import numpy\n"
        "from array_api_compat import is_numpy_array\n"
        "from .. import _numpy\n"
        "def f(xp, a: numpy.ndarray) -> numpy.ndarray:\n"
        "    '''xp is numpy'''\n"
        "    if xp is numpy or type(a) is numpy.ndarray:\n"
        "        return array_api_compat.is_numpy_namespace(xp)\n"
    )
    found = _numpy_branches(ast.parse(code))
    assert [f.split(": ", 1)[1] for f in found].count("`is numpy`") == 1
    assert any("numpy.ndarray" in f for f in found) and any("is_numpy_namespace" in f for f in found)
    assert any("imports is_numpy_array" in f for f in found)
    assert all("line 4" not in f for f in found), "annotations are no type tests"
    assert "hessarray._numpy" in _imported_modules("layers/x.py", ast.parse(code))
    assert "hessarray._numpy.loops" in _imported_modules("engine/y.py", ast.parse("from .._numpy import loops"))


#: The concrete layer classes: no module may recognize one of them by type (the engine and the
#: executors see layers only through the contract, ``Layer.lower`` included).
CONCRETE = {
    name
    for name in dir(__import__("hessarray").layers)
    if isinstance(getattr(__import__("hessarray").layers, name), type)
    and name not in ("Layer", "Activation", "Reduction")
}


def _type_matches(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Call):
            call = node.left
            if getattr(call.func, "id", None) == "type" and any(isinstance(op, (ast.Is, ast.Eq)) for op in node.ops):
                found += [c.id for c in node.comparators if isinstance(c, ast.Name) and c.id in CONCRETE]
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            found += [k.id for k in kinds if isinstance(k, ast.Name) and k.id in CONCRETE]
    return found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_matches_a_layer_type(path):
    assert _type_matches(ast.parse(path.read_text())) == [], "match layers through the contract, not by type"


def test_no_module_is_named_after_an_activation():
    activations = {"tanh", "sigmoid", "softplus", "silu", "elu", "relu", "logcosh", "sin", "cos", "exp", "square"}
    named = [p for p in PACKAGE.rglob("*.py") if any(part in activations for part in p.stem.lower().split("_"))]
    assert named == []


def test_the_type_check_catches_a_match():
    assert _type_matches(ast.parse("if type(layer) is Tanh: pass\nisinstance(x, (Dense, int))")) == ["Tanh", "Dense"]
