"""Tests for root_optax._src.leaf_state: the per-leaf trees of the transforms' states."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax


def test_per_leaf_states_work_with_tree_map_params_and_keep_leaf_structure():
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16), "v": jnp.ones((16, 8))}
  tx = root_optax.root(1e-2)
  state = tx.init(params)
  mapped = optax.tree_map_params(tx, lambda v: v, state)
  chex.assert_trees_all_equal_structs(mapped, state)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  # "w" and "v" (transposed) are one 8x16 shape group.
  assert root_optax.diagnostics(state)["bursts/8x16/norm_ema"] == pytest.approx(np.sqrt(128))
