"""Tests for `gate_outliers`, the robust default's gradient gate (`root_optax.gate`)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax


def _structured(rng, row_scale, col_scale):
  """Gaussian noise times a fixed row and column scale pattern: heavy rows and columns."""
  z = rng.standard_normal((row_scale.size, col_scale.size))
  return (row_scale[:, None] * z * col_scale[None, :]).astype(np.float32)


@functools.cache
def _jitted(threshold=10.0, decay=0.95):
  tx = root_optax.gate_outliers(threshold, decay)
  return tx, jax.jit(tx.update)


def _run(grads, threshold=10.0, dims=None):
  if dims is None:
    tx, update = _jitted(threshold)
  else:
    tx = root_optax.gate_outliers(threshold, weight_dimension_numbers=dims)
    update = jax.jit(tx.update)
  state = tx.init(grads[0])
  outs = []
  for g in grads:
    out, state = update(jax.tree.map(jnp.asarray, g), state)
    outs.append(out)
  return outs, state


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (1, 8)])
def test_gate_matches_the_numpy_reference_over_steps(maybe_jit, shape):
  rng = np.random.default_rng(0)
  rows, cols = np.exp(rng.normal(size=shape[0])), np.exp(rng.normal(size=shape[1]))
  grads = [_structured(rng, rows, cols) for _ in range(6)]
  grads[3][0, -1] *= 300.0  # a spike far beyond its row's and column's history
  grads[4][:] = 0.0  # a zero gradient leaves the history alone
  tx = root_optax.gate_outliers(4.0, 0.9)
  state, update = tx.init({"w": grads[0]}), maybe_jit(tx.update)
  history = (np.zeros(shape[0]), np.zeros(shape[1]))
  for g in grads:
    out, state = update({"w": jnp.asarray(g)}, state)
    want, *history = _reference.history_gate(g.astype(np.float64), *history, k=4.0, decay=0.9)
    np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-6)
    stats = state.stats["gradient_outliers"]
    np.testing.assert_allclose(stats.row_scale["w"][0], history[0], rtol=1e-4)
    np.testing.assert_allclose(stats.col_scale["w"][0], history[1], rtol=1e-4)


def test_gate_clips_nothing_of_persistent_heavy_rows_and_columns():
  rng = np.random.default_rng(1)
  rows = np.ones(64)
  rows[[3, 17]] = 20.0  # two rows 20x the others at every step
  cols = np.exp(rng.normal(size=256))  # column scales spread over ~50x
  cols[100] = 50.0  # a massive-activation column
  grads = [{"w": _structured(rng, rows, cols)} for _ in range(200)]
  outs, state = _run(grads)
  for g, out in zip(grads, outs):
    np.testing.assert_array_equal(out["w"], g["w"])
  assert float(state.stats["gradient_outliers"].clipped_fraction["w"][0]) == 0.0


def test_gate_catches_every_injected_spike():
  rng = np.random.default_rng(2)
  rows, cols = np.exp(0.5 * rng.normal(size=128)), np.exp(0.5 * rng.normal(size=256))
  grads = [{"w": _structured(rng, rows, cols)} for _ in range(30)]
  hits = []
  for g in grads[1:]:  # after the first step: spikes at 0.1% of the entries, +-100x rms
    hit = rng.random(g["w"].shape) < 1e-3
    rms = np.sqrt(np.mean(g["w"] ** 2))
    g["w"] = np.where(hit, g["w"] + 100 * rms * rng.choice([-1.0, 1.0], hit.shape), g["w"]).astype(np.float32)
    hits.append(hit)
  outs, _ = _run(grads)
  for g, out, hit in zip(grads[1:], outs[1:], hits):
    out = np.asarray(out["w"])
    assert hit.sum() > 0
    assert np.all(np.abs(out[hit]) < np.abs(g["w"][hit]))  # every spike clipped...
    assert np.sum(out[hit] ** 2) < 0.02 * np.sum(g["w"][hit] ** 2)  # ...to a small part of it
    np.testing.assert_array_equal(out[~hit], g["w"][~hit])  # and nothing else


def test_gate_passes_a_whole_matrix_scale_change_to_the_burst_guard():
  rng = np.random.default_rng(3)
  grads = [{"w": rng.standard_normal((32, 48)).astype(np.float32)} for _ in range(12)]
  grads[8]["w"] *= 30.0
  outs, _ = _run(grads)
  np.testing.assert_array_equal(outs[8]["w"], grads[8]["w"])


def test_gate_of_bf16_gradients_stays_within_bf16_rounding_of_float64():
  rng = np.random.default_rng(4)
  rows, cols = np.exp(rng.normal(size=16)), np.exp(rng.normal(size=24))
  grads = [_structured(rng, rows, cols) for _ in range(5)]
  grads[-1][2, 3] *= 500.0
  tx = root_optax.gate_outliers()
  state = tx.init({"w": jnp.zeros((16, 24), jnp.bfloat16)})
  history = (np.zeros(16), np.zeros(24))
  for g in grads:
    g16 = jnp.asarray(g, jnp.bfloat16)
    out, state = jax.jit(tx.update)({"w": g16}, state)
    assert out["w"].dtype == jnp.bfloat16
    want, *history = _reference.history_gate(np.asarray(g16, np.float64), *history)
    # bf16 keeps 8 significant bits: one rounding of the clipped value.
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), want, rtol=2**-8, atol=0)
  assert abs(float(out["w"][2, 3])) < 0.05 * abs(float(grads[-1][2, 3]))


def test_gate_keeps_non_finite_entries_visible_and_the_history_unchanged():
  rng = np.random.default_rng(5)
  tx, update = _jitted()
  g = {"w": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)}
  _, state = update(g, tx.init(g))
  bad = {"w": g["w"].at[1, 2].set(jnp.inf)}
  out, after = update(bad, state)
  assert np.isinf(out["w"][1, 2])
  chex.assert_trees_all_equal(after.stats["gradient_outliers"].row_scale,
                              state.stats["gradient_outliers"].row_scale)
  # A non-finite first step leaves the history empty too.
  _, first = update(bad, tx.init(g))
  chex.assert_trees_all_equal(first, tx.init(g))
  finite = optax.apply_if_finite(root_optax.gate_outliers(), 2)
  s = finite.init(g)
  _, s = finite.update(g, s)
  skipped, s2 = finite.update(bad, s)
  np.testing.assert_array_equal(skipped["w"], 0.0)
  chex.assert_trees_all_equal(s2.inner_state, s.inner_state)


def test_gate_of_zero_and_huge_gradients_is_finite():
  tx, update = _jitted()
  state = tx.init({"w": jnp.zeros((4, 8))})
  for scale in (0.0, 1.0, 1e30, 1e-30, 3e38):
    g = {"w": jnp.asarray(scale * np.random.default_rng(6).uniform(-1, 1, (4, 8)), jnp.float32)}
    out, state = update(g, state)
    assert bool(jnp.all(jnp.isfinite(out["w"])))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))


def test_gate_stacks_leaves_of_one_shape_and_batches_with_dimension_numbers():
  rng = np.random.default_rng(7)
  dims = {"a": root_optax.DimensionNumbers(0, 1), "b": root_optax.DimensionNumbers(0, 1),
          "s": root_optax.DimensionNumbers(1, 2), "v": None}
  grads = [{"a": rng.standard_normal((6, 10)).astype(np.float32),
            "b": rng.standard_normal((10, 6)).astype(np.float32),
            "s": rng.standard_normal((3, 6, 10)).astype(np.float32),
            "v": rng.standard_normal(5).astype(np.float32)} for _ in range(4)]
  grads[-1]["s"][1, 0, 0] = 1e3
  outs, state = _run(grads, dims=dims)
  np.testing.assert_array_equal(outs[-1]["v"], grads[-1]["v"])
  assert isinstance(state.stats["gradient_outliers"].row_scale["v"], optax.MaskedNode)
  assert state.stats["gradient_outliers"].row_scale["s"].shape == (3, 6)
  # Each matrix is gated alone: the same as gating it in a tree of its own.
  for key in ("a", "b", "s"):
    alone, _ = _run([{key: g[key]} for g in grads], dims={key: dims[key]})
    np.testing.assert_array_equal(outs[-1][key], alone[-1][key])
  assert abs(float(outs[-1]["s"][1, 0, 0])) < 100


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold=0.0), "threshold"), (dict(threshold=-1.0), "threshold"),
    (dict(decay=1.0), "decay"), (dict(decay=-0.1), "decay")])
def test_gate_rejects_bad_arguments_naming_them(kwargs, message):
  with pytest.raises(ValueError, match=message):
    root_optax.gate_outliers(**kwargs)


def test_root_gate_arguments_are_validated_under_roots_names():
  with pytest.raises(ValueError, match="outlier_gate_decay"):
    root_optax.root(1e-2, outlier_gate_decay=1.5)
  with pytest.raises(ValueError, match="outlier_gate"):
    root_optax.root(1e-2, outlier_gate=0.0)


def test_gate_with_the_burst_guard_in_its_pass_equals_gate_then_clip_bursts():
  rng = np.random.default_rng(8)
  dims = {"a": root_optax.DimensionNumbers(0, 1), "b": root_optax.DimensionNumbers(0, 1),
          "s": root_optax.DimensionNumbers(1, 2)}
  grads = [{"a": rng.standard_normal((6, 10)).astype(np.float32),
            "b": rng.standard_normal((10, 6)).astype(np.float32),
            "s": rng.standard_normal((3, 6, 10)).astype(np.float32)} for _ in range(8)]
  grads[4] = jax.tree.map(lambda g: 30.0 * g, grads[4])  # a burst: caught by the guard
  grads[6]["s"][2, 1, 1] = 500.0  # a spike: caught by the gate
  fused = root_optax.gate_outliers(weight_dimension_numbers=dims, burst_factor=4.0, burst_decay=0.9)
  chained = optax.chain(root_optax.gate_outliers(weight_dimension_numbers=dims),
                        root_optax.clip_bursts(4.0, 0.9, weight_dimension_numbers=dims))
  fs, cs = fused.init(grads[0]), chained.init(grads[0])
  for t, g in enumerate(grads):
    g = jax.tree.map(jnp.asarray, g)
    f_out, fs = jax.jit(fused.update)(g, fs)
    c_out, cs = jax.jit(chained.update)(g, cs)
    chex.assert_trees_all_close(f_out, c_out, rtol=1e-6)
    if t == 4:  # all five 6x10 matrices at the burst step
      assert root_optax.diagnostics(fs)["bursts/6x10/caught"] == 5
  chex.assert_trees_all_close(fs.stats["bursts"], cs[1].stats["bursts"], rtol=1e-6)
  chex.assert_trees_all_close(fs.stats["gradient_outliers"], cs[0].stats["gradient_outliers"], rtol=1e-6)
  assert root_optax.diagnostics(fs) == pytest.approx(root_optax.diagnostics(cs))
