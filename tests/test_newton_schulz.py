"""Tests for the Newton-Schulz kernel (root_optax.newton_schulz)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from root_optax._src import newton_schulz as ns_lib
from root_optax._src import normalization

MUON5 = [_reference.MUON] * 5
SHAPES = [(1, 1), (1, 9), (9, 1), (6, 10), (10, 6), (16, 16)]


@pytest.mark.parametrize("shape", SHAPES)
def test_matches_numpy_reference(maybe_jit, shape):
  x = np.random.default_rng(0).normal(size=shape)
  out = maybe_jit(lambda v: root_optax.newton_schulz(v, MUON5))(jnp.asarray(x, jnp.float32))
  assert out.shape == shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out, _reference.newton_schulz(x, MUON5), rtol=1e-4, atol=1e-5)


def test_per_iteration_coefficients_are_applied_in_order():
  steps = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5), (1.875, -1.25, 0.375)]
  x = np.random.default_rng(1).normal(size=(8, 12))
  out = root_optax.newton_schulz(jnp.asarray(x, jnp.float32), steps)
  np.testing.assert_allclose(out, _reference.newton_schulz(x, steps), rtol=1e-4, atol=1e-5)
  reversed_out = root_optax.newton_schulz(jnp.asarray(x, jnp.float32), steps[::-1])
  assert not np.allclose(out, reversed_out, atol=1e-3)


def test_batched_equals_per_matrix():
  x = np.random.default_rng(2).normal(size=(3, 7, 5)).astype(np.float32)
  batched = root_optax.newton_schulz(jnp.asarray(x), MUON5)
  for k in range(3):
    np.testing.assert_allclose(batched[k], root_optax.newton_schulz(jnp.asarray(x[k]), MUON5), rtol=1e-5, atol=1e-6)


def test_converges_to_polar_factor_with_classic_coefficients():
  x = np.random.default_rng(3).normal(size=(6, 9))
  u, _, vt = np.linalg.svd(x, full_matrices=False)
  out = root_optax.newton_schulz(jnp.asarray(x, jnp.float32), [(1.875, -1.25, 0.375)] * 40)
  np.testing.assert_allclose(out, u @ vt, atol=1e-4)


def _singular_values_after(x, normalization, steps=1):
  out = root_optax.newton_schulz(jnp.asarray(x), [(1.0, 0.0, 0.0)] * steps, normalization=normalization)
  return np.linalg.svd(np.asarray(out, np.float64), compute_uv=False)


def test_schatten4_normalisation_divides_by_schatten4_norm():
  x = np.random.default_rng(4).normal(size=(5, 8)).astype(np.float32)
  s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
  expected = s / np.sum(s**4) ** 0.25  # (a, b, c) = (1, 0, 0): only the scaling shows
  np.testing.assert_allclose(_singular_values_after(x, "schatten4"), expected, rtol=1e-5)
  np.testing.assert_allclose(_singular_values_after(x, "frobenius"), s / np.linalg.norm(s), rtol=1e-5)


def test_aol_normalisation_bounds_spectral_norm():
  x = np.random.default_rng(5).normal(size=(6, 20)).astype(np.float32)
  x[0] *= 50.0
  s = _singular_values_after(x, "aol")
  assert s.max() <= 1.0 + 1e-5
  # AOL: D = diag(sum_j |X X^T|_ij)^-1/2 applied to the Frobenius-normalised X.
  xn = x.astype(np.float64) / np.linalg.norm(x)
  d = 1.0 / np.sqrt(np.abs(xn @ xn.T).sum(axis=1))
  np.testing.assert_allclose(s, np.linalg.svd(d[:, None] * xn, compute_uv=False), rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30])
def test_extreme_scales_stay_finite(dtype, scale):
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 6)) * scale, dtype)
  out = root_optax.newton_schulz(x, MUON5)
  assert out.dtype == dtype and bool(jnp.all(jnp.isfinite(out)))
  if scale == 0.0:
    np.testing.assert_array_equal(out, 0.0)
  if scale == 1e30:  # overflow-safe norm: same direction as the unit-scale input
    unit = root_optax.newton_schulz(jnp.asarray(np.asarray(x, np.float32) / 1e30, dtype), MUON5)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(unit, np.float32), rtol=0.05, atol=0.05)


def test_zero_row_gives_zero_row():
  x = np.random.default_rng(7).normal(size=(4, 6)).astype(np.float32)
  x[2] = 0.0
  out = np.asarray(root_optax.newton_schulz(jnp.asarray(x), MUON5))
  np.testing.assert_array_equal(out[2], 0.0)
  assert np.all(np.isfinite(out))


def test_compute_dtype_bf16_keeps_output_dtype():
  # Well conditioned (8 x 64): bf16 rounding is not amplified by the slope at 0.
  x = jnp.asarray(np.random.default_rng(8).normal(size=(8, 64)), jnp.float32)
  out = root_optax.newton_schulz(x, MUON5, compute_dtype=jnp.bfloat16)
  assert out.dtype == jnp.float32
  full = root_optax.newton_schulz(x, MUON5)
  assert float(jnp.linalg.norm(out - full) / jnp.linalg.norm(full)) < 0.06  # measured 0.034
  jaxpr = str(jax.make_jaxpr(lambda v: root_optax.newton_schulz(v, MUON5, compute_dtype=jnp.bfloat16))(x))
  assert "bf16" in jaxpr


def test_rejects_vectors_and_bad_normalization():
  with pytest.raises(ValueError, match="shape"):
    root_optax.newton_schulz(jnp.ones(3), MUON5)
  with pytest.raises(ValueError, match="normalization"):
    root_optax.newton_schulz(jnp.ones((3, 3)), MUON5, normalization="l2")


@pytest.mark.parametrize("shape", [(1, 9), (6, 20), (20, 6), (8, 8), (2, 5, 17)])
@pytest.mark.parametrize("normalization", ["frobenius", "schatten4", "aol", "spectral"])
def test_gram_form_equals_standard_form(shape, normalization):
  x = jnp.asarray(np.random.default_rng(9).standard_t(3, size=shape), jnp.float32)
  kw = {"normalization": normalization}
  gram = root_optax.newton_schulz(x, MUON5, method="gram", **kw)
  standard = root_optax.newton_schulz(x, MUON5, method="standard", **kw)
  np.testing.assert_allclose(gram, standard, rtol=1e-4, atol=2e-5)
  if normalization == "frobenius" and len(shape) == 2:
    np.testing.assert_allclose(gram, _reference.newton_schulz(np.asarray(x, np.float64), MUON5), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (8, 8)])
def test_spectral_normalization_matches_numpy(shape):
  x = np.random.default_rng(11).normal(size=shape)
  y = x.T if shape[0] > shape[1] else x
  y = y / np.linalg.norm(y, 2)  # the largest singular value becomes 1
  for a, b, c in np.asarray(MUON5, np.float64).reshape(-1, 3):
    gram = y @ y.T
    y = a * y + (b * gram + c * gram @ gram) @ y
  want = y.T if shape[0] > shape[1] else y
  got = root_optax.newton_schulz(jnp.asarray(x, jnp.float32), MUON5, normalization="spectral", eps=0.0)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  zero = root_optax.newton_schulz(jnp.zeros((4, 6)), MUON5, normalization="spectral")
  np.testing.assert_array_equal(zero, 0.0)


@pytest.mark.parametrize("method", ["gram", "auto"])
def test_gram_form_zero_rows_and_rank_one(method):
  x = np.zeros((4, 24), np.float32)
  np.testing.assert_array_equal(root_optax.newton_schulz(jnp.asarray(x), MUON5, method=method), 0.0)
  x[1] = np.random.default_rng(10).normal(size=24)
  out = np.asarray(root_optax.newton_schulz(jnp.asarray(x), MUON5, method=method))
  np.testing.assert_array_equal(out[[0, 2, 3]], 0.0)
  np.testing.assert_allclose(out, _reference.newton_schulz(x.astype(np.float64), MUON5), rtol=1e-4, atol=1e-5)


def test_rejects_unknown_method():
  with pytest.raises(ValueError, match="method"):
    root_optax.newton_schulz(jnp.ones((3, 3)), MUON5, method="fastest")


def _exact_polynomial(x, coeffs):
  """U g(S) V^T in float64: what T steps of the iteration compute in exact arithmetic."""
  x = np.asarray(x, np.float64)
  x = x / np.linalg.norm(x)
  u, s, vt = np.linalg.svd(x, full_matrices=False)
  for a, b, c in coeffs:
    s = a * s + b * s ** 3 + c * s ** 5
  return (u * s) @ vt


@pytest.mark.parametrize("restarts", [(2,), (1, 3), (1, 2, 3, 4)])
def test_gram_restarts_leave_the_map_unchanged(restarts):
  x = np.random.default_rng(12).standard_t(3, size=(12, 40))
  got = root_optax.newton_schulz(jnp.asarray(x, jnp.float32), MUON5, method="gram", gram_restarts=restarts)
  np.testing.assert_allclose(got, _reference.newton_schulz(x, MUON5), rtol=1e-4, atol=2e-5)


def _near_low_rank(rng, m, n):
  return rng.normal(size=(m, 4)) @ rng.normal(size=(4, n)) + 1e-3 * rng.normal(size=(m, n))


def _decaying_spectrum(rng, m, n):
  u, _ = np.linalg.qr(rng.normal(size=(m, m)))
  v, _ = np.linalg.qr(rng.normal(size=(n, m)))
  return (u * np.arange(1, m + 1) ** -2.0) @ v.T


def _gaussian(rng, m, n):
  return rng.normal(size=(m, n))


@pytest.mark.parametrize("make,ill_conditioned", [(_gaussian, False), (_near_low_rank, True),
                                                  (_decaying_spectrum, True)])
def test_bf16_gram_with_restart_is_as_accurate_as_bf16_standard(make, ill_conditioned):
  """The bf16 Gram form blows up on ill-conditioned inputs without its restart
  (largest singular value > 5 here); with the default one at step 2 its error
  against float64 stays within 1.25x the standard bf16 iteration's and its
  largest singular value within 1.25."""
  x = make(np.random.default_rng(13), 64, 512)
  exact = _exact_polynomial(x, MUON5)
  def rel_error(**kw):
    out = root_optax.newton_schulz(jnp.asarray(x, jnp.float32), MUON5, compute_dtype=jnp.bfloat16, **kw)
    out = np.asarray(out, np.float64)
    return np.linalg.norm(out - exact) / np.linalg.norm(exact), np.linalg.norm(out, 2)
  standard, _ = rel_error(method="standard")
  restarted, top = rel_error(method="gram")  # default: gram_restarts=(2,) in bf16
  assert np.isfinite(restarted) and top < 1.25
  assert restarted <= 1.25 * standard, (restarted, standard)
  if ill_conditioned:
    _, unrestarted_top = rel_error(method="gram", gram_restarts=())
    assert unrestarted_top > 5.0


def test_rejects_restarts_outside_the_steps():
  with pytest.raises(ValueError, match="gram_restarts"):
    root_optax.newton_schulz(jnp.ones((3, 9)), MUON5, gram_restarts=(5,))
  with pytest.raises(ValueError, match="gram_restarts"):
    root_optax.newton_schulz(jnp.ones((3, 9)), MUON5, gram_restarts=(0,))
  with pytest.raises(ValueError, match="gram_restarts"):
    root_optax.newton_schulz(jnp.ones((3, 9)), MUON5, gram_restarts=(2.5,))


def test_frobenius_normalize_divides_by_the_shared_norm():
  x = jnp.asarray(np.random.default_rng(6).normal(size=(3, 5, 7)) * 1e30, jnp.float32)
  expected = x / (normalization.frobenius_norm(x, keepdims=True) + 1e-7)
  np.testing.assert_array_equal(ns_lib.frobenius_normalize(x, 1e-7), expected)
