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
    "myst_nb",  # MyST markdown (bundles myst_parser) + the stored example notebooks
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
# docs/examples is a relative symlink to ../examples (Sphinx follows it), so the executed
# notebooks are pages of the docs without a second copy in git.  Their README is for
# GitHub browsing; docs/tutorial.md says the same thing.
exclude_patterns = ["_build", "**.ipynb_checkpoints", "examples/README.md"]
autosummary_generate = True
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
myst_heading_anchors = 3
# The notebooks are stored executed (tests/test_examples.py checks it) and are rendered
# with their saved outputs; the docs build never runs them (02 needs data outside the repo).
nb_execution_mode = "off"
nb_merge_streams = True
html_theme = "alabaster"
html_static_path = ["_static"]
suppress_warnings = ["autosummary.import_cycle"]
nitpicky = False
