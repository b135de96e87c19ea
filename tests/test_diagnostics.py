"""Tests for `root_optax.diagnostics` (root_optax._src.diagnostics)."""

import jax
import jax.numpy as jnp
import optax

import root_optax


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
