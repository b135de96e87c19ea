"""Shared fixtures: run a function jitted and not jitted."""

import jax
import pytest


@pytest.fixture(params=["jit", "nojit"])
def maybe_jit(request):
  """Applies `jax.jit` in one variant and leaves the function alone in the other."""
  return jax.jit if request.param == "jit" else (lambda f, **_: f)
