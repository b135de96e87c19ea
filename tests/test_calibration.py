"""Tests for root_optax._src.calibration: fitting Newton-Schulz coefficients per shape."""

import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from _helpers import FAST
from _helpers import held_out
from _helpers import numpy_error
from root_optax._src import calibration
from root_optax._src import polynomials
from root_optax._src import spectra


@pytest.mark.parametrize("per_iteration", [True, False])
def test_calibrate_beats_muon_on_held_out_matrices(per_iteration):
  shape = (48, 96)
  result = calibration.calibrate_shape(shape, per_iteration=per_iteration, normalization="frobenius",
                                       **FAST)
  assert result.coefficients.shape == ((5, 3) if per_iteration else (1, 3))
  assert result.safety.safe
  fitted = np.mean([numpy_error(result.coefficients, g) for g in held_out(shape)])
  muon = np.mean([numpy_error(_reference.MUON, g) for g in held_out(shape)])
  assert fitted < 0.2 * muon, (fitted, muon)


def test_per_iteration_schatten4_square_beats_paper_style():
  shape = (64, 64)
  per_iter = calibration.calibrate_shape(shape, **FAST)
  one = calibration.calibrate_shape(shape, per_iteration=False, normalization="frobenius", **FAST)
  held = held_out(shape)
  err = lambda r, norm: np.mean([numpy_error(r.coefficients, g, norm) for g in held])
  assert err(per_iter, "schatten4") < 0.5 * err(one, "frobenius")


def test_calibrate_is_deterministic_and_seed_dependent():
  kw = dict(cache=False, normalization="frobenius", **FAST)
  a = calibration.calibrate_shape((32, 32), **kw)
  b = calibration.calibrate_shape((32, 32), **kw)
  c = calibration.calibrate_shape((32, 32), seed=1, **kw)
  np.testing.assert_array_equal(a.coefficients, b.coefficients)
  assert a.loss == b.loss
  assert not np.array_equal(a.coefficients, c.coefficients)


def test_cache_reuses_results_in_memory_and_on_disk(tmp_path):
  root_optax.clear_calibration_cache()
  first = calibration.calibrate_shape((16, 40), cache_dir=str(tmp_path), **FAST)
  assert first.seconds > 0
  again = calibration.calibrate_shape((40, 16), cache_dir=str(tmp_path), **FAST)  # same key
  assert again.seconds == 0.0
  np.testing.assert_array_equal(first.coefficients, again.coefficients)
  root_optax.clear_calibration_cache()
  from_disk = calibration.calibrate_shape((16, 40), cache_dir=str(tmp_path), **FAST)
  assert from_disk.seconds == 0.0
  np.testing.assert_array_equal(first.coefficients, from_disk.coefficients)
  assert len(list(tmp_path.iterdir())) == 1


def test_fit_stays_in_band_when_the_spectrum_pulls_out_of_it():
  # Only tiny singular values: mapping them to 1 needs a huge gain, which the
  # band forbids; the result must still pass the dense check.
  tiny = [np.geomspace(1e-4, 2e-3, 64)] * 4
  result = calibration.calibrate_shape((64, 64), spectra={(64, 64): tiny}, real_fraction=1.0,
                                       normalization="frobenius", **FAST)
  env = polynomials.polynomial_envelope(result.coefficients, 5)
  assert result.safety.safe and env.max_value <= polynomials.DEFAULT_MAX_GAIN
  assert result.start.endswith("+fit")


def test_mixed_spectra_are_weighted_real_to_random_one_to_three():
  gauss, real = np.full(8, 0.5), np.full(4, 0.25)
  x, w = spectra.weighted_values(gauss, real, calibration.PAPER_REAL_FRACTION)
  assert w.sum() == pytest.approx(1.0)
  assert w[x == 0.25].sum() == pytest.approx(0.25) and w[x == 0.5].sum() == pytest.approx(0.75)
  x, w = spectra.weighted_values(gauss, None, 0.25)
  np.testing.assert_array_equal(x, gauss)


def test_calibrate_returns_a_usable_table():
  table = calibration.calibrate([(16, 40), "24x24"], name="t", **FAST)
  assert set(table.shapes) == {(16, 40), (24, 24)} and table.normalization == "schatten4"
  tx = root_optax.ada_newton_orthogonalize(table)
  out, _ = tx.update({"w": jnp.ones((40, 16)) + jnp.eye(40, 16)}, tx.init(None))
  assert np.all(np.isfinite(out["w"]))


@pytest.mark.parametrize("kwargs", [dict(normalization="aol"), dict(real_fraction=1.5),
                                    dict(max_gain=1.0), dict(ns_steps=0)])
def test_calibrate_validates_arguments(kwargs):
  with pytest.raises((ValueError, TypeError)):
    calibration.calibrate_shape((8, 8), **kwargs)


def test_public_safety_check_and_cache_clear():
  assert root_optax.check_safety is polynomials.check_safety
  assert isinstance(root_optax.check_safety(_reference.MUON, 5), root_optax.SafetyReport)
  calibration.calibrate_shape((8, 24), **FAST)
  assert calibration.calibrate_shape((8, 24), **FAST).seconds == 0.0
  root_optax.clear_calibration_cache()
  assert calibration.calibrate_shape((8, 24), **FAST).seconds > 0
