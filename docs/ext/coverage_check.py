"""Fails the docs build when a public symbol of root_optax is not documented.

As optax's ``coverage_check``: every name in ``root_optax.__all__`` must have an
autodoc entry (``.. autofunction:: root`` and the like under
``.. currentmodule:: root_optax``) somewhere in the docs. The check runs after
the documents are read, in every builder; each missing name is a warning on
``api.rst`` and the build's exit status is 1, with or without ``-W``.
"""

from typing import Any

import root_optax
from sphinx import application
from sphinx import environment
from sphinx.util import logging

logger = logging.getLogger(__name__)
API_PAGE = "api"


def public_symbols() -> set[str]:
  """``root_optax.<name>`` for every name in ``root_optax.__all__``."""
  return {f"root_optax.{name}" for name in root_optax.__all__}


def undocumented(env: environment.BuildEnvironment) -> list[str]:
  """The public symbols that no autodoc directive describes."""
  documented = set(env.domaindata["py"]["objects"])
  return sorted(public_symbols() - documented)


def check_coverage(app: application.Sphinx, env: environment.BuildEnvironment) -> None:
  missing = undocumented(env)
  for name in missing:
    logger.warning("public symbol %s is not in the API reference (add it to docs/api.rst)",
                   name, location=API_PAGE, type="coverage_check", subtype="undocumented")
  if missing:
    app.statuscode = 1


def setup(app: application.Sphinx) -> dict[str, Any]:
  app.connect("env-check-consistency", check_coverage)
  return {"version": root_optax.__version__, "parallel_read_safe": True}
