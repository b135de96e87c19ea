"""Shared fixtures: run a function jitted and not jitted."""

import jax
import pytest


@pytest.fixture(params=["jit", "nojit"])
def maybe_jit(request):
  """Applies `jax.jit` in one variant and leaves the function alone in the other."""
  return jax.jit if request.param == "jit" else (lambda f, **_: f)


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache(tmp_path_factory):
  """Coefficients fitted by tests go to a temporary directory, not ~/.cache."""
  import root_optax  # pylint: disable=import-outside-toplevel
  root_optax.set_calibration_cache_dir(str(tmp_path_factory.mktemp("root_optax_cache")))
  yield
  root_optax.set_calibration_cache_dir(None)
