"""Tests for root_optax._src.outliers (the quantiles it uses: `test_quantiles.py`)."""

import functools

import chex
import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax


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


def _spiked(shape, fraction=1e-3, scale=100.0, seed=0):
  """A Gaussian gradient with ``fraction`` of its entries given an added ±scale x rms."""
  rng = np.random.default_rng(seed)
  g = rng.standard_normal(shape).astype(np.float32)
  hit = rng.random(shape) < fraction
  spikes = scale * np.sqrt(np.mean(g**2)) * rng.choice([-1.0, 1.0], shape)
  return np.where(hit, g + spikes, g).astype(np.float32), hit


def _gate(multiplier=3.0, method="fast"):
  return root_optax.soft_threshold_outliers(0.9, method=method, multiplier=multiplier,
                                            track_outliers=True, name="gate")


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_gate_clips_almost_nothing_of_a_clean_gaussian_and_every_spike(method):
  clean = np.random.default_rng(1).standard_normal((1024, 1024)).astype(np.float32)
  tx = _gate(method=method)
  out, state = tx.update({"w": jnp.asarray(clean)}, tx.init({"w": clean}))
  clipped = float(np.mean(np.asarray(out["w"]) != clean))
  assert clipped < 1e-4  # under 0.01% of the entries
  assert float(root_optax.diagnostics(state)["gate/1024x1024/clipped_fraction"]) == pytest.approx(clipped)

  spiked, hit = _spiked((512, 1024), seed=2)
  out, state = tx.update({"w": jnp.asarray(spiked)}, tx.init({"w": spiked}))
  out = np.asarray(out["w"])
  eps = 3.0 * np.quantile(np.abs(spiked.astype(np.float64)), 0.9) + 1e-9
  assert np.all(np.abs(out[hit]) <= eps * (1 + 1e-6))  # every spike is clipped...
  assert np.abs(spiked[hit]).min() > eps  # ...and every spike was beyond the gate
  np.testing.assert_allclose(out, _reference.gate(spiked.astype(np.float64)), rtol=1e-5, atol=1e-6)
  figures = root_optax.diagnostics(state)
  assert figures["gate/512x1024/clipped_fraction"] * spiked.size == pytest.approx(hit.sum(), abs=2)
  removed = np.linalg.norm(spiked.astype(np.float64) - out)
  assert figures["gate/512x1024/removed_norm"] == pytest.approx(removed, rel=1e-4)
  assert figures["gate/512x1024/threshold"] == pytest.approx(eps, rel=1e-5)


@functools.cache
def _jitted_gate(multiplier):
  tx = _gate(multiplier)
  return tx, jax.jit(tx.update)


# Multipliers and shapes (1xN and Nx1 among them) from small pools, so that
# the jitted gate compiles once per pair rather than once per example.
@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(seed=st.integers(0, 2**31 - 1), multiplier=st.sampled_from([1.0, 1.7, 3.0, 10.0]),
                  shape=st.sampled_from([(1, 30), (30, 1), (7, 13), (30, 30)]))
def test_gated_base_plus_outliers_is_the_input_and_is_bounded(seed, multiplier, shape):
  m = np.random.default_rng(seed).standard_t(2, size=shape).astype(np.float32)
  tx, update = _jitted_gate(multiplier)
  out, state = update({"w": jnp.asarray(m)}, tx.init({"w": m}))
  base = np.asarray(out["w"])
  eps = float(state.stats["gate"].threshold["w"][0])
  np.testing.assert_allclose(eps, multiplier * np.quantile(np.abs(m.astype(np.float64)), 0.9) + 1e-9,
                             rtol=1e-5)
  assert np.all(np.abs(base) <= np.float32(eps))
  outliers = np.sign(m) * np.maximum(np.abs(m) - np.float32(eps), 0)
  np.testing.assert_allclose(base + outliers, m, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_all_equal_entries_are_not_clipped(method):
  # quantile == every |entry|: eps = v + 1e-9 >= v, so nothing is an outlier.
  m = jnp.full((3, 5, 7), -0.25, jnp.float32)
  tx = root_optax.soft_threshold_outliers(0.9, method=method, track_outliers=True,
                                          weight_dimension_numbers=root_optax.DimensionNumbers(1, 2))
  out, state = jax.jit(tx.update)({"m": m}, tx.init({"m": m}))
  np.testing.assert_array_equal(out["m"], m)
  assert float(state.outlier_fraction["m"]) == 0.0
