"""Tests for examples/common/noise.py: seeded gradient corruption."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from examples.common import noise as grad_noise
from examples.common import optimizers


def _noise(kind, **kw):
  fields = dict(kind=kind, fraction=1e-3, spike_scale=100.0, t_scale=0.5, df=1.5,
                burst_prob=0.01, burst_scale=30.0)
  return ml_collections.ConfigDict({**fields, **kw})


def test_spike_noise_adds_100_rms_to_a_tenth_of_a_percent_of_entries():
  rng = np.random.default_rng(0)
  g = {"w": jnp.asarray(rng.normal(size=(1000, 1000)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(200_000,)) * 3.0, jnp.float32)}
  out = grad_noise.inject_noise(g, jax.random.key(1), _noise("spikes"))
  for name, leaf in g.items():
    added = np.asarray(out[name], np.float64) - np.asarray(leaf, np.float64)
    hit = added != 0
    expected = 1e-3 * leaf.size  # Binomial(n, 1e-3): std ~ sqrt(expected)
    assert abs(hit.sum() - expected) < 5 * math.sqrt(expected), name
    rms = float(np.sqrt(np.mean(np.square(np.asarray(leaf, np.float64)))))
    np.testing.assert_allclose(np.abs(added[hit]), 100 * rms, rtol=1e-4, err_msg=name)
    assert 0.4 < np.mean(added[hit] > 0) < 0.6, name  # random sign, additive
  same = grad_noise.inject_noise(g, jax.random.key(1), _noise("spikes"))
  np.testing.assert_array_equal(out["w"], same["w"])  # same key, same corruption
  other = grad_noise.inject_noise(g, jax.random.key(2), _noise("spikes"))
  assert not np.array_equal(np.asarray(other["w"]) != np.asarray(g["w"]),
                            np.asarray(out["w"]) != np.asarray(g["w"]))


def _lm_like_grads():
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {"embed": {"embedding": normal(256, 16)},
          "blocks": {"0": {"fc": {"kernel": normal(16, 64)}, "norm1": {"scale": normal(16)},
                           "attn": {"query": {"kernel": normal(16, 16)}}}},
          "lm_head": {"kernel": normal(16, 256)}}


def test_bursts_add_30x_norm_directions_to_hidden_matrices_on_burst_steps():
  grads = _lm_like_grads()
  hidden = optimizers.is_hidden(grads)
  # Leaves in key order: blocks.0.attn.query, blocks.0.fc, blocks.0.norm1.scale, embed, lm_head.
  assert jax.tree.leaves(hidden) == [True, True, False, False, False]
  key = jax.random.key(3)
  steps = grad_noise.burst_steps(key, 2000, 0.01)
  assert 5 < len(steps) < 40  # Bernoulli(0.01): 20 expected
  burst_key = grad_noise.step_noise_key(key, steps[0])
  calm_key = grad_noise.step_noise_key(key, next(t for t in range(1, 2000) if t not in steps))
  noise = _noise("bursts")
  calm = grad_noise.inject_noise(grads, calm_key, noise)
  for a, b in zip(jax.tree.leaves(calm), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(a, b)
  out = grad_noise.inject_noise(grads, burst_key, noise)
  for o, g, h in zip(jax.tree.leaves(out), jax.tree.leaves(grads), jax.tree.leaves(hidden)):
    if not h:
      np.testing.assert_array_equal(o, g)  # embeddings, heads, norms: untouched
      continue
    added = np.asarray(o, np.float64) - np.asarray(g, np.float64)
    ratio = np.linalg.norm(added) / np.linalg.norm(np.asarray(g, np.float64))
    np.testing.assert_allclose(ratio, 30.0, rtol=1e-3)
    # A random direction: spread over the matrix, not aligned with the gradient.
    cos = np.sum(added * np.asarray(g)) / (np.linalg.norm(added) * np.linalg.norm(g))
    assert abs(cos) < 0.2 and np.mean(added != 0) > 0.99


def test_default_seeds_have_bursts_in_a_300_step_run():
  counts = [len(grad_noise.burst_steps(grad_noise.noise_key(s), 300, 0.01)) for s in (0, 1, 2)]
  assert counts == [5, 4, 2]  # documented in configs/lm_outliers.py and examples/common/noise.py


def test_student_t_noise_matches_numpy_quantiles():
  g = jnp.full((400, 250), 2.0, jnp.float32)  # rms 2
  out = grad_noise.inject_noise({"w": g}, jax.random.key(0), _noise("student_t"))["w"]
  z = np.abs(np.asarray(out - g)) / (0.5 * 2.0)
  ref = np.abs(np.random.default_rng(0).standard_t(1.5, size=400 * 250))
  for q in (0.5, 0.9, 0.99):
    assert abs(np.quantile(z, q) / np.quantile(ref, q) - 1) < 0.1, q
  none = grad_noise.inject_noise({"w": g}, jax.random.key(0), _noise("none"))["w"]
  assert none is g
  with pytest.raises(ValueError, match="noise kind"):
    grad_noise.inject_noise({"w": g}, jax.random.key(0), _noise("gaussian"))


def test_student_t_noise_has_the_t2_distribution():
  """The df = 2 inverse-CDF sampler against the t(2) CDF 1/2 + t / (2 sqrt(2 + t^2))."""
  samples = np.asarray(grad_noise._student_t(jax.random.key(0), 2.0, (100_000,), jnp.float32))
  for t in (-10.0, -2.0, -0.5, 0.0, 0.7, 3.0, 30.0):
    expected = 0.5 + t / (2 * math.sqrt(2 + t * t))
    assert abs(np.mean(samples <= t) - expected) < 0.005, t
  assert np.all(np.isfinite(samples))
