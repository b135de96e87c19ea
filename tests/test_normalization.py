"""Tests for root_optax._src.normalization: the normalisations' names and the safe norm."""

import jax.numpy as jnp
import numpy as np
import pytest

from root_optax._src import coefficients
from root_optax._src import normalization


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_frobenius_norm_is_exact_for_huge_entries_and_zero(dtype):
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 10)), dtype)
  for m in (x, x * 1e30):
    expected = np.linalg.norm(np.asarray(m, np.float64), axis=(-2, -1))
    got = normalization.frobenius_norm(m)
    assert got.dtype == jnp.float32 and got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert normalization.frobenius_norm(x, keepdims=True).shape == (2, 1, 1)
  np.testing.assert_array_equal(normalization.frobenius_norm(jnp.zeros((3, 4), dtype)), 0.0)


def test_normalization_names_and_optax_aliases():
  assert set(normalization.PRECONDITIONINGS.values()) <= set(normalization.NORMALIZATIONS)
  assert set(normalization.CALIBRATION_NORMALIZATIONS) <= set(normalization.NORMALIZATIONS)
  assert normalization.normalization_for("schatten") == "schatten4"
  assert normalization.normalization_for(None) is None
  with pytest.raises(ValueError, match=r"preconditioning must be one of .* got 'l2'"):
    normalization.normalization_for("l2")
  with pytest.raises(ValueError, match=r"normalization must be one of \('frobenius', "
                     r"'schatten4', 'aol', 'spectral'\), got 'l2'"):
    coefficients.load_coefficients({"normalization": "l2", "shapes": {}})


def test_schatten_p_of_the_calibration_normalizations():
  assert normalization.CALIBRATION_NORMALIZATIONS == ("frobenius", "schatten4")
  assert [normalization.schatten_p(n) for n in normalization.CALIBRATION_NORMALIZATIONS] == [2.0, 4.0]
  with pytest.raises(ValueError, match=r"normalization must be one of \('frobenius', 'schatten4'\)"):
    normalization.schatten_p("aol")
