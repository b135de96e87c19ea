"""Tests for the robust stages: the outlier gate, the burst guard and diagnostics."""

import functools
import math

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax


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


def _norm_sequence(factors, shape=(8, 16), seed=0):
  rng = np.random.default_rng(seed)
  return [(f * rng.standard_normal(shape) / np.sqrt(np.prod(shape))).astype(np.float32)
          for f in factors]


def _run_bursts(grads, **kwargs):
  tx = root_optax.clip_bursts(**kwargs)
  params = {"w": jnp.zeros(grads[0].shape), "b": jnp.zeros(3)}
  state, outs = tx.init(params), []
  update = jax.jit(tx.update)
  for g in grads:
    out, state = update({"w": jnp.asarray(g), "b": jnp.ones(3)}, state)
    outs.append(out)
  return outs, state


def test_burst_guard_leaves_ordinary_norm_changes_alone_bit_for_bit():
  # Norms that halve, double and drift within the band, as a loss curve does.
  factors = [1.0, 2.0, 1.0, 0.5, 0.6, 1.5, 3.0, 2.5, 1.0, 0.3, 0.9]
  grads = _norm_sequence(factors)
  outs, state = _run_bursts(grads)
  for g, out in zip(grads, outs):
    np.testing.assert_array_equal(out["w"], g)
    np.testing.assert_array_equal(out["b"], 1.0)
  assert int(state.stats["bursts"].caught["w"][0]) == 0


def test_burst_guard_matches_numpy_and_rescales_a_burst_to_the_running_norm():
  factors = [1.0, 1.1, 0.9, 30.0, 1.0, 25.0, 1.2]
  grads = _norm_sequence(factors, seed=1)
  outs, state = _run_bursts(grads, factor=4.0, decay=0.9)
  ema, caught = 0.0, 0
  for g, out in zip(grads, outs):
    expected, new_ema, hit = _reference.burst_guard(g.astype(np.float64), ema, 4.0, 0.9)
    np.testing.assert_allclose(out["w"], expected, rtol=1e-5, atol=1e-7)
    if hit:
      assert np.linalg.norm(out["w"]) == pytest.approx(ema, rel=1e-5)
    ema, caught = new_ema, caught + hit
  assert caught == 2 and int(state.stats["bursts"].caught["w"][0]) == 2
  assert float(state.stats["bursts"].norm_ema["w"][0]) == pytest.approx(ema, rel=1e-5)
  assert root_optax.diagnostics(state) == {"bursts/8x16/caught": 2.0,
                                           "bursts/8x16/norm_ema": pytest.approx(ema, rel=1e-5)}


def test_burst_guard_follows_a_lasting_rise_of_the_norm():
  grads = _norm_sequence([1.0] * 5 + [10.0] * 30)
  outs, _ = _run_bursts(grads)
  later = [float(np.linalg.norm(o["w"]) / np.linalg.norm(g)) for o, g in zip(outs[-5:], grads[-5:])]
  np.testing.assert_array_equal(later, 1.0)  # tracked, no longer clipped


def test_burst_guard_zero_and_non_finite_gradients():
  grads = [np.zeros((8, 16), np.float32)] * 3 + _norm_sequence([1.0])
  outs, state = _run_bursts(grads)
  for out in outs:
    assert bool(jnp.all(jnp.isfinite(out["w"])))
  bad = np.full((8, 16), np.nan, np.float32)
  outs, after = _run_bursts(_norm_sequence([1.0, 1.0]) + [bad])
  assert bool(jnp.all(jnp.isnan(outs[-1]["w"])))  # not hidden
  assert bool(jnp.isfinite(after.stats["bursts"].norm_ema["w"][0]))


def test_burst_guard_per_matrix_of_a_stacked_leaf():
  rng = np.random.default_rng(4)
  g = rng.standard_normal((3, 8, 16)).astype(np.float32)
  tx = root_optax.clip_bursts(weight_dimension_numbers=root_optax.DimensionNumbers(1, 2))
  state = tx.init({"s": jnp.zeros((3, 8, 16))})
  _, state = tx.update({"s": jnp.asarray(g)}, state)
  burst = g.copy()
  burst[1] *= 50.0
  out, state = tx.update({"s": jnp.asarray(burst)}, state)
  np.testing.assert_array_equal(out["s"][0], burst[0])
  np.testing.assert_array_equal(out["s"][2], burst[2])
  assert float(jnp.linalg.norm(out["s"][1])) == pytest.approx(np.linalg.norm(g[1]), rel=1e-5)
  np.testing.assert_array_equal(state.stats["bursts"].caught["s"], [0, 1, 0])


@pytest.mark.parametrize("kwargs, name", [({"factor": 1.0}, "factor"), ({"decay": 1.0}, "decay"),
                                          ({"decay": -0.1}, "decay")])
def test_burst_guard_validates_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.clip_bursts(**kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"outlier_gate": 0.0}, "outlier_gate"), ({"burst_factor": 1.0}, "burst_factor"),
    ({"burst_decay": 1.0}, "burst_decay"), ({"variant": "exact"}, "variant"),
    ({"quantile": 1.5}, "quantile"),
])
def test_root_validates_the_robust_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.root(1e-2, **kwargs)


def test_robust_stages_switch_off_with_inf_and_quantile_one():
  params = {"w": jnp.ones((8, 16))}
  grads = {"w": jnp.asarray(np.random.default_rng(5).standard_normal((8, 16)), jnp.float32)}
  off = root_optax.root(1e-2, outlier_gate=math.inf, burst_factor=math.inf, ns_coeffs="muon")
  state = off.init(params)
  assert not root_optax.diagnostics(state)
  muon_like = optax.contrib.muon(1e-2, beta=0.95, nesterov=True, weight_decay=0.1,
                                 consistent_rms=0.2, ns_coeffs=(3.4445, -4.7750, 2.0315))
  ours, _ = off.update(grads, state, params)
  theirs, _ = muon_like.update(grads, muon_like.init(params), params)
  del theirs  # optax's momentum is an EMA; compare our own NumPy step instead
  expected, _ = _reference.root_matrix_step(np.ones((8, 16)), np.asarray(grads["w"], np.float64),
                                            np.zeros((8, 16)), 1e-2, [_reference.MUON] * 5, p=1.0)
  np.testing.assert_allclose(1.0 + np.asarray(ours["w"]), expected, rtol=1e-5, atol=1e-6)


def test_robust_root_under_apply_if_finite_skips_a_nan_step_with_state_unchanged():
  params = {"w": jnp.ones((8, 16))}
  tx = optax.apply_if_finite(root_optax.root(1e-2), 3)
  state = tx.init(params)
  good = {"w": jnp.asarray(np.random.default_rng(6).standard_normal((8, 16)), jnp.float32)}
  _, state = tx.update(good, state, params)
  bad = {"w": good["w"].at[0, 0].set(jnp.inf)}
  updates, after = tx.update(bad, state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  chex.assert_trees_all_equal(after.inner_state, state.inner_state)


def test_robust_root_bf16_and_huge_values_stay_finite():
  params = {"w": jnp.ones((8, 16), jnp.bfloat16)}
  tx = root_optax.root(1e-2)
  state = tx.init(params)
  for scale in (1.0, 1e30, 1e-30, 0.0):
    g = {"w": jnp.asarray(scale * np.random.default_rng(7).standard_normal((8, 16)), jnp.bfloat16)}
    updates, state = jax.jit(tx.update)(g, state, params)
    assert updates["w"].dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(updates["w"])))


def test_diagnostics_through_inject_hyperparams_and_a_chain():
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16)}
  tx = optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(learning_rate=1e-2)
  state = tx.init(params)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  keys = set(root_optax.diagnostics(state))
  assert {"gradient_outliers/8x16/clipped_fraction", "bursts/8x16/caught"} <= keys
  paper = root_optax.diagnostics(root_optax.root(1e-2, variant="paper").init(params))
  assert set(paper) == {f"momentum_outliers/8x16/{k}"
                        for k in ("clipped_fraction", "threshold", "removed_norm")}


def test_per_leaf_states_work_with_tree_map_params_and_keep_leaf_structure():
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16), "v": jnp.ones((16, 8))}
  tx = root_optax.root(1e-2)
  state = tx.init(params)
  mapped = optax.tree_map_params(tx, lambda v: v, state)
  chex.assert_trees_all_equal_structs(mapped, state)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  # "w" and "v" (transposed) are one 8x16 shape group.
  assert root_optax.diagnostics(state)["bursts/8x16/norm_ema"] == pytest.approx(np.sqrt(128))
