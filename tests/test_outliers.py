"""Tests for root_optax.outliers."""

import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from root_optax import _counting
from root_optax import quantiles

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


# A few shapes (1xN and Nx1 among them), so that the jitted functions compile
# once per shape rather than once per example; the values are what varies.
_SMALL_SHAPES = st.sampled_from([(1, 1), (1, 12), (12, 1), (3, 5), (12, 12)])
_jitted_split = jax.jit(root_optax.split_outliers)
_jitted_soft_threshold = jax.jit(root_optax.soft_threshold)


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(
    m=hnp.arrays(np.float32, _SMALL_SHAPES, elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False)),
    eps=st.floats(0.0, 1e3, width=32, allow_subnormal=False))
def test_split_is_exact_and_bounded(m, eps):
  base, out = _jitted_split(jnp.asarray(m), jnp.float32(eps))
  base, out = np.asarray(base), np.asarray(out)
  # B + O == M, up to the one rounding of O = M - B (exact when |M| <= 2 eps, Sterbenz).
  gap = np.abs(base.astype(np.float64) + out.astype(np.float64) - m.astype(np.float64))
  assert np.all(gap <= 0.5 * np.spacing(np.abs(m))), gap
  inside = np.abs(m) <= 2 * np.float32(eps)
  np.testing.assert_array_equal((base + out)[inside], m[inside])
  assert np.all(np.abs(base) <= np.float32(eps))
  np.testing.assert_allclose(out, np.asarray(_jitted_soft_threshold(jnp.asarray(m), jnp.float32(eps))),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(base, _reference.clip_outliers(m.astype(np.float64), eps), rtol=1e-6, atol=1e-3)


@functools.cache
def _tracked_threshold(p):
  """`soft_threshold_outliers(p)` with tracking, and its jitted update (one per ``p``)."""
  tx = root_optax.soft_threshold_outliers(p, track_outliers=True)
  return tx, jax.jit(tx.update)


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    shape=st.sampled_from([(4, 4), (13, 40), (40, 17)]),
    p=st.sampled_from([0.5, 0.85, 0.9, 0.95]))
def test_fraction_clipped_is_one_minus_p(seed, shape, p):
  m = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
  tx, update = _tracked_threshold(p)
  out, state = update({"w": jnp.asarray(m)}, tx.init({"w": m}))
  n = m.size
  fraction = float(state.outlier_fraction["w"])
  # Continuous entries: exactly floor((1 - p)(n - 1)) entries lie above the
  # interpolated quantile, give or take the one straddling it.
  assert abs(fraction * n - (1 - p) * (n - 1)) <= 1.0 + 1e-6
  eps = np.quantile(np.abs(m), p) + 1e-9
  np.testing.assert_allclose(out["w"], np.clip(m, -eps, eps), rtol=1e-6)


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_transform_matches_reference_and_skips_non_matrices(maybe_jit, method):
  rng = np.random.default_rng(2)
  tree = {"w": rng.standard_t(3, size=(20, 30)).astype(np.float32),
          "b": rng.normal(size=(30,)).astype(np.float32) * 100}
  tx = root_optax.soft_threshold_outliers(0.9, method=method)
  out, _ = maybe_jit(tx.update)(tree, tx.init(tree))
  w = tree["w"].astype(np.float64)
  np.testing.assert_allclose(out["w"], _reference.clip_outliers(w, _reference.threshold(w)), rtol=1e-6)
  np.testing.assert_array_equal(out["b"], tree["b"])


def test_fixed_threshold():
  m = jnp.asarray([[0.5, -3.0], [2.0, 0.1]])
  tx = root_optax.soft_threshold_outliers(threshold=1.0)
  out, _ = tx.update([m], tx.init([m]))
  np.testing.assert_allclose(out[0], [[0.5, -1.0], [1.0, 0.1]])


def test_stacked_leaf_thresholds_each_matrix():
  rng = np.random.default_rng(3)
  stack = rng.normal(size=(4, 8, 6)).astype(np.float32) * np.arange(1, 5)[:, None, None]
  dims = {"s": root_optax.DimensionNumbers(reduction_axis=1, output_axis=2)}
  tx = root_optax.soft_threshold_outliers(0.8, weight_dimension_numbers=dims)
  out, _ = tx.update({"s": jnp.asarray(stack)}, tx.init({"s": stack}))
  for k in range(4):
    eps = np.quantile(np.abs(stack[k]), 0.8) + 1e-9
    np.testing.assert_allclose(out["s"][k], np.clip(stack[k], -eps, eps), rtol=1e-6)


def test_zero_and_bf16_inputs_stay_finite():
  tx = root_optax.soft_threshold_outliers()
  zeros = {"w": jnp.zeros((5, 7))}
  out, _ = tx.update(zeros, tx.init(zeros))
  np.testing.assert_array_equal(out["w"], 0.0)
  bf = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)), jnp.bfloat16)}
  out, _ = tx.update(bf, tx.init(bf))
  assert out["w"].dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(out["w"])))


@pytest.mark.parametrize("kwargs, name", [
    ({"quantile": 0.0}, "quantile"), ({"quantile": 1.5}, "quantile"),
    ({"threshold": -1.0}, "threshold"), ({"method": "sort"}, "method"),
    ({"offset": -1e-9}, "offset"), ({"rank_tolerance": 1.0}, "rank_tolerance"),
    ({"rank_tolerance": -0.1}, "rank_tolerance")])
def test_invalid_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.soft_threshold_outliers(**kwargs)


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
  stride = _counting.sample_stride(rows, cols)
  flat[::stride] = rng.uniform(100.0, 200.0, flat[::stride].size)  # every sampled entry is huge
  m = flat.reshape(rows, cols)
  for q in (0.3, 0.5, 0.9, 0.999):
    expected = np.quantile(np.abs(m).astype(np.float64), q)
    np.testing.assert_allclose(root_optax.fast_abs_quantiles([jnp.asarray(m)], q)[0], expected, rtol=1e-6)


def test_same_shape_leaves_get_their_own_thresholds():
  """Leaves are stacked by shape for the selection; each keeps its own quantile."""
  rng = np.random.default_rng(4)
  tree = {f"w{i}": (rng.standard_t(3, size=(6, 9)) * 10.0**i).astype(np.float32) for i in range(3)}
  tree["v"] = rng.normal(size=(2, 6, 9)).astype(np.float32)
  dims = {k: None if k != "v" else root_optax.DimensionNumbers(1, 2) for k in tree}
  dims.update({f"w{i}": root_optax.DimensionNumbers(0, 1) for i in range(3)})
  for method in ("fast", "exact"):
    tx = root_optax.soft_threshold_outliers(0.9, method=method, weight_dimension_numbers=dims)
    out, _ = tx.update(tree, tx.init(tree))
    for i in range(3):
      m = tree[f"w{i}"].astype(np.float64)
      np.testing.assert_allclose(out[f"w{i}"], _reference.clip_outliers(m, _reference.threshold(m)), rtol=1e-6)
    for k in range(2):
      m = tree["v"][k].astype(np.float64)
      np.testing.assert_allclose(out["v"][k], _reference.clip_outliers(m, _reference.threshold(m)), rtol=1e-6)


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


@pytest.mark.parametrize("p", [0.8, 0.9])
def test_transform_with_rank_tolerance_clips_about_one_minus_p(p):
  m = np.random.default_rng(1).standard_t(3, size=(200, 300)).astype(np.float32)
  tx = root_optax.soft_threshold_outliers(p, rank_tolerance=0.01, track_outliers=True)
  out, state = tx.update({"w": jnp.asarray(m)}, tx.init({"w": m}))
  clipped = float(state.outlier_fraction["w"]) * m.size
  assert abs(clipped - (1 - p) * (m.size - 1)) <= 0.01 * m.size + 1
  assert np.max(np.abs(np.asarray(out["w"]))) < np.max(np.abs(m))


def test_tree_without_matrices_passes_through():
  tree = {"b": jnp.arange(3.0), "s": jnp.float32(2.0)}
  for method in ("fast", "exact"):
    tx = root_optax.soft_threshold_outliers(method=method, track_outliers=True)
    out, state = tx.update(tree, tx.init(tree))
    chex.assert_trees_all_equal(out, tree)
    chex.assert_trees_all_equal(state.outlier_fraction, {"b": 0.0, "s": 0.0})
  assert root_optax.fast_abs_quantiles([], 0.9) == []


@pytest.mark.parametrize("kwargs, name", [
    ({"method": "sort"}, "method"), ({"rank_tolerance": 1.0}, "rank_tolerance")])
def test_abs_quantiles_validates(kwargs, name):
  with pytest.raises(ValueError, match=name):
    quantiles.abs_quantiles([jnp.ones((3, 3))], 0.9, **kwargs)


def test_opaque_offsets_change_only_how_stacks_are_cut():
  rng = np.random.default_rng(7)
  tree = {"a": jnp.asarray(rng.standard_t(2, (6, 10)), jnp.float32),
          "b": jnp.asarray(rng.standard_t(2, (10, 6)), jnp.float32),
          "c": jnp.asarray(rng.standard_t(2, (6, 10)), jnp.float32), "v": jnp.ones(4)}
  outs = []
  for opaque in (False, True):
    tx = root_optax.soft_threshold_outliers(0.9, multiplier=1.5, track_outliers=True, opaque_offsets=opaque)
    updates, state = jax.jit(tx.update)(tree, tx.init(tree))
    outs.append((updates, state))
  chex.assert_trees_all_equal(*outs)
  assert float(jnp.max(jnp.abs(outs[1][0]["b"] - tree["b"]))) > 0  # the clip acted on the tall leaf
  with pytest.raises(TypeError, match="opaque_offsets"):
    root_optax.soft_threshold_outliers(opaque_offsets=1)
