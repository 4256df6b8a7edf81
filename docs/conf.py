"""Sphinx configuration: MyST Markdown pages, the furo theme, the CLI reference generated from optcv's parser.

Sphinx with MyST rather than MkDocs: autodoc reads the API from the docstrings and a directive of our own (docs/_ext)
the CLI from the parser that `optcv` itself runs, so neither reference can drift from the code; furo ships its
assets, so the built site works offline. `sphinx-build -W` (the lint step of CI) fails on any warning.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))  # optcv_docs: tables rendered from optcv's declarations

project = "optcv"
author = "the optcv authors"
release = importlib.metadata.version("optcv")
version = release
copyright = "2026, the optcv authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "optcv_docs",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3  # `[text](#a-heading)` links within and across pages, as on GitHub
myst_enable_extensions = ["colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": False}

html_theme = "furo"
html_title = f"optcv {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
