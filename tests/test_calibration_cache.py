"""Tests for root_optax._src.calibration_cache: 'auto' coefficients, fitted once, cached."""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import _reference
import root_optax
from _helpers import held_out
from _helpers import numpy_error
from root_optax._src import calibration
from root_optax._src import calibration_cache
from root_optax._src import polynomials


def _auto_fit_in_a_new_process(shape, cache_dir):
  code = ("import json, sys; from root_optax._src import calibration as c; "
          f"r = c.coefficients_for_shape({shape!r}, 5, cache_dir={cache_dir!r}); "
          "print(json.dumps(r.coefficients.tolist()))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout)


def test_auto_coefficients_are_identical_in_two_processes_and_safe():
  first = _auto_fit_in_a_new_process((40, 72), False)
  second = _auto_fit_in_a_new_process((72, 40), False)
  assert first == second
  assert polynomials.check_safety(np.asarray(first), 5).safe
  held = held_out((40, 72))
  ours = np.mean([numpy_error(first, g, "schatten4") for g in held])
  muon = np.mean([numpy_error(_reference.MUON, g) for g in held])
  assert ours < 0.1 * muon


def test_auto_cache_miss_writes_hit_reads_and_a_bad_directory_falls_back(tmp_path, caplog):
  miss = calibration.coefficients_for_shape((24, 56), 4, cache_dir=str(tmp_path))
  files = list(tmp_path.glob("*.json"))
  assert len(files) == 1 and miss.seconds > 0 and miss.coefficients.shape == (4, 3)
  calibration_cache.clear_calibration_cache()
  hit = calibration.coefficients_for_shape((24, 56), 4, cache_dir=str(tmp_path))
  assert hit.seconds == 0.0
  np.testing.assert_array_equal(hit.coefficients, miss.coefficients)
  blocked = tmp_path / "a_file"
  blocked.write_text("")
  with caplog.at_level(logging.INFO, logger="root_optax"):
    for shape in [(24, 57), (24, 58)]:
      calibration.coefficients_for_shape(shape, 4, cache_dir=str(blocked / "cache"))
  assert sum("not writable" in r.message for r in caplog.records) == 1


def test_auto_cache_never_inside_the_package_and_false_means_memory():
  package = os.path.dirname(root_optax.__file__)
  assert calibration_cache.resolve_cache_dir(os.path.join(package, "data")) is None
  assert calibration_cache.resolve_cache_dir(False) is None
  root_optax.set_calibration_cache_dir("/tmp/somewhere")
  try:
    assert calibration_cache.resolve_cache_dir() == "/tmp/somewhere"
  finally:
    root_optax.set_calibration_cache_dir(None)
  with pytest.raises(TypeError, match="path"):
    root_optax.set_calibration_cache_dir(3)
