"""Sphinx configuration for the hessarray documentation.

Build (offline: no intersphinx, no remote theme or images) from the repository root::

    python -m sphinx -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# Import hessarray from this checkout, installed or not.
DOCS = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(DOCS.parent))

import hessarray  # noqa: E402

# -- project -------------------------------------------------------------------------------------
project = "hessarray"
author = "hessarray developers"
copyright = "hessarray developers"
release = hessarray.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ----------------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# autodoc / autosummary: one page per public name, generated into docs/generated/.
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "none"  # the numpydoc "Parameters" sections carry the types
autodoc_default_options = {}

# numpydoc: the class pages list their members themselves (see _templates/autosummary).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# MyST: $...$ and $$...$$ math, ::: fences, anchors for ## and ### headings.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Built offline: no inventories are fetched.
intersphinx_mapping: dict = {}

# -- HTML ----------------------------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"hessarray {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Exact gradients, Jacobians and Hessians of layered models on any array-API backend",
    "fixed_sidebar": False,
    "show_related": True,
}
pygments_style = "sphinx"


# -- keep api.rst in step with hessarray.__all__ ------------------------------------------------------
def _check_api_listing(app) -> None:
    """Warn when a name of ``hessarray.__all__`` is missing from ``api.rst``."""
    from sphinx.util import logging

    text = (DOCS / "api.rst").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s+~?(?:hessarray\.)?([A-Za-z_]\w*)\s*$", text, flags=re.MULTILINE))
    missing = [name for name in hessarray.__all__ if name not in listed]
    if missing:
        logging.getLogger(__name__).warning(
            "api.rst does not list these names of hessarray.__all__: %s", ", ".join(missing)
        )


def _public_bases(app, name, obj, options, bases) -> None:
    """Show public classes in "Bases:" (``MSELoss`` derives from a private ``_Targeted``)."""
    public = []
    for base in bases:
        stack = [base]
        while stack:
            cls = stack.pop(0)
            if cls.__name__.startswith("_"):
                stack.extend(cls.__bases__)
            elif cls not in public:
                public.append(cls)
    bases[:] = public


def setup(app):
    app.connect("builder-inited", _check_api_listing)
    app.connect("autodoc-process-bases", _public_bases)
