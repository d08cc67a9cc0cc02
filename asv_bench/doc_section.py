"""The marked sections of ``docs/benchmarks.md`` that the side benchmarks write.

Each script owns the text between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``;
``compare.py`` keeps these sections when it rewrites the rest of the file.
"""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    """The begin and end lines of section ``name``."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(text: str, begin: str, end: str, docs: Path = DOCS) -> None:
    """Replace the section between ``begin`` and ``end`` of ``docs`` in place by ``text`` (which
    holds both markers), or append it when the file has no such section."""
    old = docs.read_text() if docs.exists() else "# Benchmarks\n"
    text = text.rstrip("\n")
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + text + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    docs.write_text(new)
