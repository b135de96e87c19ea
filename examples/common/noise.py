"""Gradient corruptions of the robustness experiment (`inject_noise`).

The corruption of a step is a function of (noise seed, step) only, so every
optimizer sees the same corrupted steps.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from examples.common.optimizers import is_hidden

NOISE_KINDS = ("none", "spikes", "student_t", "bursts")


# fold_in tags: the per-step burst decision and the per-step leaf keys are
# separate streams of the same (noise seed, step) key.
# _BURST_TAG = 0 is the first tag (0, 1, ...) with >= 2 burst steps in 300 for
# each of the default seeds 0, 1, 2 (5, 4 and 2; `examples/common/noise_test.py`).
_BURST_TAG, _LEAVES_TAG = 0, 0x6C656166


# Tag of the noise stream of a seed (the model init uses nnx.Rngs(seed) directly).
_NOISE_STREAM = 0x6E6F6973


def noise_key(seed: int) -> jax.Array:
  """The gradient-corruption key of ``seed`` (`step_noise_key` per step)."""
  return jax.random.fold_in(jax.random.key(seed), _NOISE_STREAM)


def step_noise_key(noise_key: jax.Array, step) -> jax.Array:
  """The corruption key of ``step``: a function of (noise seed, step) only."""
  return jax.random.fold_in(noise_key, step)


def is_burst_step(key: jax.Array, burst_prob: float) -> jax.Array:
  """Whether the step with corruption key ``key`` is a 'bursts' step (Bernoulli)."""
  return jax.random.bernoulli(jax.random.fold_in(key, _BURST_TAG), burst_prob)


def burst_steps(noise_key: jax.Array, steps: int, burst_prob: float) -> list[int]:
  """The steps in ``1..steps`` on which 'bursts' corrupts the gradients."""
  keys = jax.vmap(lambda t: step_noise_key(noise_key, t))(jnp.arange(1, steps + 1))
  hits = np.asarray(jax.vmap(lambda k: is_burst_step(k, burst_prob))(keys))
  return [int(t) for t in np.flatnonzero(hits) + 1]


def inject_noise(grads: Any, key: jax.Array, noise: Any) -> Any:
  """Corrupts gradients (the robustness experiment); the loss stays clean.

  ``key`` is `step_noise_key` (noise seed, step), so the corruption pattern is
  the same for every optimizer. ``rms`` and ``||G||`` are those of the clean
  leaf.

  * ``'spikes'``: in every leaf, each entry independently with probability
    ``noise.fraction`` (0.1%) gets an *added* ``+-noise.spike_scale * rms``
    (100 x, random sign), every step.
  * ``'student_t'``: adds ``noise.t_scale * rms * t`` to every entry of each
    leaf, ``t`` Student-t with ``noise.df`` degrees of freedom (``df <= 2``:
    infinite variance, heavy tails; df = 2 is sampled by its inverse CDF).
  * ``'bursts'``: on a step with ``is_burst_step`` (Bernoulli(``burst_prob``)
    per step, the same decision for all leaves), every hidden matrix
    (`is_hidden`) gets ``G += noise.burst_scale * ||G||_F * Z / ||Z||_F``, ``Z``
    Gaussian: a random direction 30x the gradient's own norm. Other leaves and
    other steps are untouched.
  """
  if noise.kind == "none":
    return grads
  if noise.kind not in NOISE_KINDS:
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {noise.kind!r}")
  hidden = jax.tree.leaves(is_hidden(grads)) if noise.kind == "bursts" else None
  leaves, treedef = jax.tree.flatten(grads)
  keys = jax.random.split(jax.random.fold_in(key, _LEAVES_TAG), len(leaves))
  burst = is_burst_step(key, noise.burst_prob) if noise.kind == "bursts" else None

  def rms(g):
    return jnp.sqrt(jnp.mean(jnp.square(g.astype(jnp.float32))))

  def corrupt(i, g, k):
    if noise.kind == "spikes":
      k_hit, k_sign = jax.random.split(k)
      hit = jax.random.bernoulli(k_hit, noise.fraction, g.shape)
      sign = jax.random.rademacher(k_sign, g.shape, jnp.float32)
      added = jnp.where(hit, noise.spike_scale * rms(g) * sign, 0.0)
      return (g + added).astype(g.dtype)
    if noise.kind == "student_t":
      return g + noise.t_scale * rms(g) * _student_t(k, noise.df, g.shape, g.dtype)
    if not hidden[i]:  # bursts
      return g

    def add_burst(g):
      z = jax.random.normal(k, g.shape, jnp.float32)
      norm = jnp.linalg.norm(g.astype(jnp.float32))
      return (g + noise.burst_scale * norm * z / jnp.linalg.norm(z)).astype(g.dtype)

    return jax.lax.cond(burst, add_burst, lambda g: g, g)  # no sampling on calm steps

  return jax.tree.unflatten(treedef, [corrupt(i, g, k) for i, (g, k) in enumerate(zip(leaves, keys))])


def _student_t(key: jax.Array, df: float, shape, dtype) -> jax.Array:
  """Student-t samples; df = 2 by its closed-form inverse CDF (``jax.random.t``'s
  gamma sampler costs more than a training step of the LM example on CPU)."""
  if df != 2:
    return jax.random.t(key, df, shape, dtype)
  u = jax.random.uniform(key, shape, jnp.float32, minval=1e-7, maxval=1 - 1e-7)
  return ((2 * u - 1) / jnp.sqrt(2 * u * (1 - u))).astype(dtype)
