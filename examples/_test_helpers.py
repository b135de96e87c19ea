"""Helpers shared by the examples' tests (`examples/**/*_test.py`)."""

import jax
import jax.numpy as jnp


def tiny_params():
  """A tiny LM-like parameter tree: an embedding, a hidden matrix with a scale, a head."""
  key = jax.random.split(jax.random.key(0), 4)
  return {
      "embed": {"embedding": jax.random.normal(key[0], (8, 4))},
      "block": {"kernel": jax.random.normal(key[1], (4, 6)), "scale": jnp.ones(4)},
      "lm_head": {"kernel": jax.random.normal(key[2], (4, 8))},
  }


def two_steps(tx, params, grads):
  """The second update of ``tx`` on ``grads`` (its first step has the warm-up's zero rate)."""
  state = tx.init(params)
  _, state = tx.update(grads, state, params)  # step 0: warmup lr is 0
  return tx.update(grads, state, params)[0]
