"""Tests of `root_optax._src.moved_modules`: 0.3.0's module names, deprecated."""

import importlib
import pkgutil
import subprocess
import sys

import pytest

import root_optax
from root_optax._src import moved_modules


def test_public_surface_is_all_and_nothing_else_is_a_module():
  assert list(root_optax.__all__) == sorted(root_optax.__all__)
  assert all(hasattr(root_optax, name) for name in root_optax.__all__)
  public_modules = [m.name for m in pkgutil.iter_modules(root_optax.__path__) if not m.name.startswith("_")]
  assert public_modules == [], public_modules
  for name in set(root_optax.__all__) - {"DimensionNumbers"}:  # optax's MuonDimensionNumbers
    assert getattr(root_optax, name).__module__.startswith("root_optax._src."), name


@pytest.mark.parametrize("old", moved_modules.MOVED)
def test_every_old_module_imports_and_warns_on_use(old):
  module = importlib.import_module(f"root_optax.{old}")
  new = importlib.import_module(f"root_optax._src.{old}")
  name = next(n for n, v in vars(new).items() if not n.startswith("_") and callable(v))
  with pytest.warns(DeprecationWarning, match=rf"root_optax\.{old} is deprecated .* 0\.5\.0"):
    value = getattr(module, name)
  assert value is getattr(new, name) or value is getattr(root_optax, name, None)


def test_public_names_point_at_the_public_replacement():
  with pytest.warns(DeprecationWarning, match=r"use root_optax\.SpectrumRecorder"):
    from root_optax.calibration import SpectrumRecorder  # pylint: disable=import-outside-toplevel
  assert SpectrumRecorder is root_optax.SpectrumRecorder
  with pytest.warns(DeprecationWarning, match=r"use root_optax\.clear_calibration_cache"):
    assert root_optax.calibration.clear_cache is root_optax.clear_calibration_cache


def test_names_that_moved_between_modules_still_resolve():
  from root_optax._src import variants  # pylint: disable=import-outside-toplevel
  with pytest.warns(DeprecationWarning, match="internal"):
    assert root_optax.alias.VARIANT_DEFAULTS is variants.VARIANT_DEFAULTS
  with pytest.raises(AttributeError, match="no_such_name"):
    root_optax.stacking.no_such_name  # pylint: disable=pointless-statement


def test_importing_root_optax_warns_about_nothing():
  # Only reading an old module's attribute warns; importing the package does not.
  code = "import warnings; warnings.simplefilter('error'); import root_optax, root_optax.stacking"
  subprocess.run([sys.executable, "-c", code], check=True)
