"""Tests for root_optax._src.spectra: singular values, the Table 1 metric, `SpectrumRecorder`."""

import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from _helpers import FAST
from _helpers import numpy_error
from root_optax._src import calibration
from root_optax._src import spectra


@pytest.mark.parametrize("normalization", ["frobenius", "schatten4"])
@pytest.mark.parametrize("shape", [(40, 40), (30, 70), (70, 30)])
def test_objective_matches_numpy_svd(shape, normalization):
  g = np.random.default_rng(0).standard_normal(shape)
  s = spectra.matrix_singular_values(g)
  np.testing.assert_allclose(s, np.linalg.svd(g, compute_uv=False), rtol=1e-8, atol=1e-10)
  for coeffs in [_reference.MUON, [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]]:
    got = spectra.orthogonalization_error(coeffs, s, 5, normalization)
    assert got == pytest.approx(numpy_error(coeffs, g, normalization), rel=1e-9)


def test_objective_equals_kernel_distance_to_polar_factor():
  g = np.random.default_rng(1).standard_normal((24, 40))
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  out = np.asarray(root_optax.newton_schulz(jnp.asarray(g, jnp.float32), [_reference.MUON] * 5,
                                            eps=0.0), np.float64)
  kernel = np.sum((out - u @ vt) ** 2) / 24
  assert kernel == pytest.approx(numpy_error(_reference.MUON, g), rel=1e-3)


def test_normalized_spectrum_of_zero_and_huge_matrices():
  np.testing.assert_array_equal(spectra.normalized_spectrum(np.zeros(5)), np.zeros(5))
  x = spectra.normalized_spectrum(np.array([1e300, 1e299]), "schatten4")
  assert np.all(np.isfinite(x)) and x.max() <= 1.0


def test_recorder_collects_spectra_and_mixes_into_calibration(tmp_path):
  rng = np.random.default_rng(3)
  rec = spectra.SpectrumRecorder(max_per_shape=3)
  for _ in range(4):
    tree = {"w": jnp.asarray(rng.standard_normal((12, 30)), jnp.float32), "b": jnp.ones(30)}
    rec.record(tree)
  assert list(rec.spectra) == [(12, 30)] and len(rec.spectra[(12, 30)]) == 3
  np.testing.assert_allclose(rec.spectra[(12, 30)][-1],
                             np.linalg.svd(np.asarray(tree["w"], np.float64), compute_uv=False),
                             rtol=1e-6)
  rec.save(str(tmp_path / "s.npz"))
  loaded = spectra.SpectrumRecorder.load(str(tmp_path / "s.npz"))
  np.testing.assert_array_equal(loaded.spectra[(12, 30)][0], rec.spectra[(12, 30)][0])
  kw = dict(normalization="frobenius", cache=False, **FAST)
  real = calibration.calibrate_shape((30, 12), spectra=loaded, real_fraction=1.0, **kw)
  plain = calibration.calibrate_shape((30, 12), **kw)
  assert real.safety.safe and not np.array_equal(real.coefficients, plain.coefficients)
