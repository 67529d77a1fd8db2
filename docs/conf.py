"""Sphinx configuration for pegleg's documentation."""

import os
import sys

import sphinx_autosummary_accessors

sys.path.insert(0, os.path.abspath(".."))
import pegleg  # noqa: E402  (registers the accessor for autosummary)

project = "pegleg"
author = "pegleg developers"
copyright = "2026, pegleg developers"
version = release = pegleg.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx_autosummary_accessors",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
autosummary_generate = True
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
myst_heading_anchors = 3
html_theme = "alabaster"
html_static_path = ["_static"]
suppress_warnings = ["autosummary.import_cycle"]
nitpicky = False
