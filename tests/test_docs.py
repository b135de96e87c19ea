"""The docs: every public symbol has an autodoc entry in docs/api.rst.

The Sphinx build checks the same (docs/ext/coverage_check.py) and runs the
docstring examples (`.ci/run`, `sphinx-build -b doctest`); this test keeps the
API page complete without Sphinx installed.
"""

import pathlib
import re

import root_optax

API_PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.rst"
ENTRY = re.compile(r"^\.\. auto(?:function|class|data)::\s+(\S+)", re.M)


def test_every_public_symbol_has_an_api_entry():
  documented = {name.removeprefix("root_optax.") for name in ENTRY.findall(API_PAGE.read_text())}
  missing = sorted(set(root_optax.__all__) - documented)
  assert not missing, f"add to {API_PAGE}: {missing}"
  assert not documented - set(root_optax.__all__), "api.rst documents names outside __all__"
