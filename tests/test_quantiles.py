"""Tests for the |entry| quantiles: root_optax._src.quantiles, quantile_search and counting."""

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import root_optax
from root_optax._src import counting
from root_optax._src import quantiles

SHAPES = [(1, 1), (1, 7), (9, 1), (5, 8), (33, 17), (64, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("q", [0.5, 0.85, 0.9, 0.99, 1.0])
def test_quantiles_match_numpy(shape, q):
  m = np.random.default_rng(1).standard_t(2, size=(3,) + shape).astype(np.float32)
  expected = np.quantile(np.abs(m).reshape(3, -1).astype(np.float64), q, axis=-1)
  exact = root_optax.exact_abs_quantile(jnp.asarray(m), q)
  fast = root_optax.fast_abs_quantiles([jnp.asarray(m)], q)[0]
  np.testing.assert_allclose(exact, expected, rtol=2e-6)
  np.testing.assert_allclose(fast, expected, rtol=2e-6)


def test_fast_quantile_with_ties_and_zeros():
  m = np.zeros((10, 10), np.float32)
  m[:3] = 2.0
  m[3, :5] = -1.0
  for q in (0.5, 0.65, 0.7, 0.72, 0.9):
    expected = np.quantile(np.abs(m), q)
    np.testing.assert_allclose(root_optax.fast_abs_quantiles([jnp.asarray(m)], q)[0], expected, rtol=1e-6)


def test_fast_quantile_bf16_and_huge_values():
  m = jnp.asarray([[1e30, -3e29, 2.0, 0.0]], jnp.float32)
  np.testing.assert_allclose(root_optax.fast_abs_quantiles([m], 0.5)[0], np.quantile(np.abs(np.asarray(m)), 0.5), rtol=1e-6)
  b = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.bfloat16)
  expected = np.quantile(np.abs(np.asarray(b, np.float32)), 0.9)
  np.testing.assert_allclose(root_optax.fast_abs_quantiles([b], 0.9)[0], expected, rtol=1e-6)


def _sort_sizes(jaxpr) -> list[int]:
  """Sizes of every operand sorted anywhere in ``jaxpr`` (sub-jaxprs included)."""
  sizes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "sort":
      sizes += [v.aval.size for v in eqn.invars]
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      sizes += _sort_sizes(sub)
  return sizes


def test_fast_method_sorts_only_a_small_sample():
  m = jnp.ones((2, 256, 256))
  fast = jax.make_jaxpr(lambda x: quantiles.fast_abs_quantiles([x], 0.9))(m).jaxpr
  assert _sort_sizes(fast) and max(_sort_sizes(fast)) <= 2 * 1025  # a sample per matrix
  exact = jax.make_jaxpr(lambda x: quantiles.exact_abs_quantile(x, 0.9))(m).jaxpr
  assert max(_sort_sizes(exact)) == m.size


def test_fast_quantile_is_exact_when_the_sample_misleads():
  """A sample bracket that misses (structured data) only costs passes, never accuracy."""
  rows, cols = 256, 384
  rng = np.random.default_rng(5)
  flat = rng.uniform(0.0, 1.0, rows * cols).astype(np.float32)
  stride = counting.sample_stride(rows, cols)
  flat[::stride] = rng.uniform(100.0, 200.0, flat[::stride].size)  # every sampled entry is huge
  m = flat.reshape(rows, cols)
  for q in (0.3, 0.5, 0.9, 0.999):
    expected = np.quantile(np.abs(m).astype(np.float64), q)
    np.testing.assert_allclose(root_optax.fast_abs_quantiles([jnp.asarray(m)], q)[0], expected, rtol=1e-6)


def _rank_error(m: np.ndarray, value: float, q: float) -> int:
  """Entries of ``|m|`` strictly between ``value`` and the exact quantile (float64)."""
  a = np.abs(m.astype(np.float64)).ravel()
  lo, hi = sorted((float(value), float(np.quantile(a, q))))
  return int(np.count_nonzero((a > lo) & (a < hi)))


_DISTRIBUTIONS = {
    "normal": lambda rng, shape: rng.normal(size=shape),
    "cauchy": lambda rng, shape: rng.standard_t(1, size=shape),
    "uniform": lambda rng, shape: rng.uniform(size=shape),
    "ties": lambda rng, shape: rng.integers(-20, 21, size=shape) * 0.5,
    "scaled_rows": lambda rng, shape: rng.normal(size=shape) * np.logspace(-3, 3, shape[-2])[:, None],
}


_jitted_fast_quantile = jax.jit(lambda m, q, tolerance: root_optax.fast_abs_quantiles([m], q, tolerance)[0])


@pytest.mark.parametrize("dist", sorted(_DISTRIBUTIONS))
@pytest.mark.parametrize("shape", [(3, 96, 160), (256, 130)])
def test_rank_tolerance_bounds_the_rank_error(dist, shape):
  m = _DISTRIBUTIONS[dist](np.random.default_rng(7), shape).astype(np.float32)
  mats = m.reshape((-1,) + shape[-2:])
  for q in (0.5, 0.9, 0.99):
    for tolerance in (1e-3, 1e-2, 0.1):
      got = _jitted_fast_quantile(jnp.asarray(m), q, tolerance)
      allowed = int(np.floor(np.float32(tolerance) * mats[0].size))
      for mat, value in zip(mats, np.ravel(got)):
        assert _rank_error(mat, value, q) <= allowed, (q, tolerance)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    m=hnp.arrays(np.float32, st.sampled_from([(1, 1), (1, 30), (30, 1), (2, 3), (7, 13), (17, 16), (30, 30)]),
                 elements=st.sampled_from([0.0, 0.5, -1.0, 2.0, 1e-30, 3e30, 7.0])
                 | st.floats(-1e6, 1e6, width=32)),
    q=st.floats(0.0, 1.0),
    tolerance=st.sampled_from([0.0, 0.01, 0.1, 0.5]))
def test_rank_tolerance_property(m, q, tolerance):
  got = float(_jitted_fast_quantile(jnp.asarray(m), q, tolerance))
  allowed = int(np.floor(np.float32(tolerance) * m.size))
  assert _rank_error(m, got, q) <= allowed
  if allowed == 0:
    # A traced q puts the rank p (n - 1) in float32: its fraction is off by up to
    # n * 2**-23, and the interpolated value by that share of the gap it lies in.
    s = np.sort(np.abs(m.astype(np.float64)).ravel())
    k = int(np.floor(q * (m.size - 1)))
    atol = (s[min(k + 1, m.size - 1)] - s[k]) * m.size * 2.0**-23
    np.testing.assert_allclose(got, np.quantile(np.abs(m.astype(np.float64)), q), rtol=1e-6, atol=atol)


def test_rank_tolerance_stops_early():
  """A 5% tolerance ends the search before the order statistics are read.

  Guards the speed knob: were the early stop dead, the value would be the exact
  quantile. The error stays within 5% of the entries.
  """
  m = np.random.default_rng(0).normal(size=(256, 256)).astype(np.float32)
  got = float(root_optax.fast_abs_quantiles([jnp.asarray(m)], 0.9, 0.05)[0])
  assert 0 < _rank_error(m, got, 0.9) <= 0.05 * m.size


def test_rank_tolerance_value_does_not_depend_on_stacking():
  """Each matrix's value comes from its own search, whether stacked with others or not."""
  rng = np.random.default_rng(3)
  ms = [jnp.asarray(rng.standard_t(3, size=s).astype(np.float32)) for s in ((3, 64, 96), (64, 96), (96, 64))]
  together = quantiles.abs_quantiles(ms, 0.9, quantiles.FAST, 0.01)
  for m, value in zip(ms, together):
    np.testing.assert_array_equal(value, quantiles.abs_quantiles([m], 0.9, quantiles.FAST, 0.01)[0])


@pytest.mark.parametrize("kwargs, name", [
    ({"method": "sort"}, "method"), ({"rank_tolerance": 1.0}, "rank_tolerance")])
def test_abs_quantiles_validates(kwargs, name):
  with pytest.raises(ValueError, match=name):
    quantiles.abs_quantiles([jnp.ones((3, 3))], 0.9, **kwargs)
