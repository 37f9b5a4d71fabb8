"""Sphinx configuration of the BackOBS API reference (``make docs``)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "BackOBS"
author = "The BackOBS developers"
copyright = "BackOBS developers, MIT License"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

exclude_patterns = ["_build", "examples", "developer_manual.org"]
source_suffix = {".rst": "restructuredtext"}

html_theme = "alabaster"
html_title = "BackOBS API reference"
