"""Tests for root_optax._src.leaf_state: the per-leaf trees of the transforms' states."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax
from root_optax._src import dimensions
from root_optax._src import leaf_state


def test_per_leaf_states_work_with_tree_map_params_and_keep_leaf_structure():
  params = {"w": jnp.ones((8, 16)), "b": jnp.ones(16), "v": jnp.ones((16, 8))}
  tx = root_optax.root(1e-2)
  state = tx.init(params)
  mapped = optax.tree_map_params(tx, lambda v: v, state)
  chex.assert_trees_all_equal_structs(mapped, state)
  _, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  # "w" and "v" (transposed) are one 8x16 shape group.
  assert root_optax.diagnostics(state)["bursts/8x16/norm_ema"] == pytest.approx(np.sqrt(128))


class _Figures(NamedTuple):
  shape: jax.Array
  rows: jax.Array


def test_init_stats_round_trip_through_matrix_entries():
  params = {"b": jnp.ones(5), "stacked": jnp.ones((3, 4, 6)), "w": jnp.ones((6, 2))}
  dims = {"b": None, "stacked": root_optax.DimensionNumbers(1, 2), "w": root_optax.DimensionNumbers(0, 1)}
  make = lambda batch, rows, cols: _Figures(leaf_state.matrix_shape_array(rows, cols),
                                            jnp.arange(batch * rows, dtype=jnp.float32).reshape(batch, rows))
  stats = leaf_state.init_stats(_Figures, make, params, dims)
  # One tree like the params per field; non-matrix leaves are MaskedNode.
  assert isinstance(stats.rows["b"], optax.MaskedNode)
  np.testing.assert_array_equal(stats.shape["stacked"], [4, 6])
  np.testing.assert_array_equal(stats.shape["w"], [2, 6])
  assert stats.rows["stacked"].shape == (3, 4) and stats.rows["w"].shape == (1, 6)
  views = dimensions.matrix_leaves(params, dims)
  entries = leaf_state.matrix_entries(stats, views)
  assert [e.rows.shape for e in entries] == [(3, 4), (1, 6)]
  back = leaf_state.stats_trees(_Figures, [e._replace(rows=2 * e.rows) for e in entries], views)
  np.testing.assert_array_equal(back.rows["stacked"], 2 * stats.rows["stacked"])
  assert jax.tree.structure(back) == jax.tree.structure(stats)
