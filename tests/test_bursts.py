"""Tests for `clip_bursts`, the burst guard (`root_optax._src.bursts`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax


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
