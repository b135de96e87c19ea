"""Sphinx configuration for the root_optax documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``; the
docstring examples run with ``-b doctest``. autodoc imports the installed
``root_optax`` (CI builds from a tree without the source), so nothing here adds
the checkout to ``sys.path``.
"""

import doctest
import re
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext"))

import root_optax  # pylint: disable=g-import-not-at-top,wrong-import-position

project = "root_optax"
author = "root_optax contributors"
copyright = "2025, root_optax contributors"  # pylint: disable=redefined-builtin
version = release = root_optax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "myst_parser",
    "coverage_check",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Docstrings write `name` for code and cross-references (`root`, `optax.chain`):
# link what Sphinx knows, show the rest as code. Nothing is fetched (no intersphinx).
default_role = "py:obj"

# -- autodoc / napoleon (Google-style docstrings, as optax) -------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Defaults as values: `calibrate`'s settings keywords are not in its source text.
autodoc_preserve_defaults = False
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- doctest: docstring examples and ```{doctest} blocks of the pages ---------
doctest_global_setup = """
import jax
import jax.numpy as jnp
import optax
import root_optax
"""
doctest_default_flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1

# -- MyST (the guides are Markdown) -------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# -- HTML ----------------------------------------------------------------------
html_theme = "alabaster"
html_title = f"root_optax {release}"
html_theme_options = {"description": "ROOT, the Robust Orthogonalized Optimizer, for Optax"}


# -- docstring plurals ---------------------------------------------------------
# Docstrings write plurals of code names as `jax.ShapeDtypeStruct`s; reST needs a
# separator after the closing backtick, so insert an escaped (invisible) space.
_PLURAL_OF_ROLE = re.compile(r"(?<![`\w])(`[^`\s][^`]*(?<=[^`\s])`)(?=[A-Za-z])")


def _plural_roles(app, what, name, obj, options, lines):
  del app, what, name, obj, options
  lines[:] = [_PLURAL_OF_ROLE.sub(r"\1\\ ", line) for line in lines]


def setup(app):
  app.connect("autodoc-process-docstring", _plural_roles)
