"""Tests for root_optax._src.dimensions: matrix views and resolving dimension numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import root_optax
from root_optax._src import dimensions

DN = root_optax.DimensionNumbers


@pytest.mark.parametrize("shape, dims, expected", [
    ((6, 4), DN(0, 1), (1, 6, 4)),
    ((3, 6, 4), DN(1, 2), (3, 6, 4)),
    ((3, 3, 4, 8), DN((0, 1, 2), 3), (1, 36, 8)),
    ((5, 2, 7), DN(2, 0), (2, 7, 5)),
])
def test_matrix_view_round_trip(shape, dims, expected):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  mats = dimensions.to_matrices(x, dims)
  assert mats.shape == expected
  np.testing.assert_array_equal(dimensions.from_matrices(mats, shape, dims), x)


def test_matrix_view_puts_reduction_axes_in_rows():
  x = np.random.default_rng(0).normal(size=(5, 2, 7)).astype(np.float32)
  mats = dimensions.to_matrices(jnp.asarray(x), DN(reduction_axis=2, output_axis=0))
  np.testing.assert_array_equal(mats[1], x[:, 1, :].T)  # batch axis 1; rows = axis 2


def test_overlapping_axes_are_rejected():
  with pytest.raises(ValueError, match="disjoint"):
    dimensions.to_matrices(jnp.ones((2, 3, 4)), DN(1, 1))


def test_resolve_defaults_and_errors():
  tree = {"w": jnp.ones((2, 3)), "s": jnp.ones((2, 3, 4)), "b": jnp.ones(3)}
  assert dimensions.resolve(None, tree) == [None, None, dimensions.MATRIX]  # keys sorted: b, s, w
  assert dimensions.resolve(DN(1, 2), tree)[1] == DN(1, 2)
  with pytest.raises(ValueError, match="rank"):
    dimensions.resolve({"w": None, "s": None, "b": DN(0, 1)}, tree)
  with pytest.raises(TypeError, match="weight_dimension_numbers"):
    dimensions.validate_spec({"w": "rows"})


PREFIX_PARAMS = {"w1": {"a": jnp.ones((4, 6)), "b": jnp.ones(6)},
                 "w2": {"c": jnp.ones((3, 5, 6)), "d": jnp.ones((6, 4))}}


@pytest.mark.parametrize("spec, expected", [
    # keys flatten sorted: w1/a, w1/b, w2/c, w2/d
    ({"w1": None, "w2": {"c": DN(1, 2), "d": DN()}}, [None, None, DN(1, 2), DN()]),
    ({"w1": DN(), "w2": None}, [DN(), None, None, None]),  # rank-1 leaves under a prefix: None
    ({"w1": None, "w2": DN(1, 2)}, [None, None, DN(1, 2), DN(1, 2)]),
])
def test_resolve_accepts_prefix_trees(spec, expected):
  assert dimensions.resolve(spec, PREFIX_PARAMS) == expected
  assert dimensions.resolve(lambda params: spec, PREFIX_PARAMS) == expected


def test_prefix_tree_gives_the_same_root_step_as_the_full_tree():
  params = {"w1": {"a": jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32),
                   "b": jnp.ones(6)},
            "w2": {"d": jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)), jnp.float32)}}
  full = {"w1": {"a": None, "b": None}, "w2": {"d": DN()}}
  prefix = {"w1": None, "w2": DN()}
  updates = []
  for spec in (full, prefix):
    tx = root_optax.root(0.1, ns_coeffs="muon", muon_weight_dimension_numbers=spec)
    updates.append(tx.update(params, tx.init(params), params)[0])
  jax.tree.map(np.testing.assert_array_equal, *updates)
  # And the leaves of w1 went to AdamW: w1/a is not an orthogonalised matrix.
  tx = root_optax.root(0.1, ns_coeffs="muon")
  assert not np.allclose(updates[0]["w1"]["a"], tx.update(params, tx.init(params), params)[0]["w1"]["a"])


class _CallableTree(dict):
  """A dict of dimension numbers that is also callable, as every equinox Module is."""

  def __call__(self, *args):
    raise AssertionError("a tree of dimension numbers was called")


jax.tree_util.register_pytree_node(
    _CallableTree, lambda t: (list(t.values()), list(t.keys())),
    lambda keys, values: _CallableTree(zip(keys, values)))


def test_a_callable_tree_of_dimension_numbers_is_never_called():
  params = _CallableTree(w=jnp.ones((4, 6)), b=jnp.ones(6))
  spec = _CallableTree(w=DN(), b=None)
  assert not dimensions.is_spec_function(spec)
  assert dimensions.is_spec_function(lambda p: spec)
  calls = []
  fn = lambda p: calls.append(1) or spec
  assert dimensions.resolve(fn, params) == dimensions.resolve(spec, params) == [DN(), None]
  tx = root_optax.root(0.1, ns_coeffs="muon", muon_weight_dimension_numbers=fn)
  updates, _ = tx.update(params, tx.init(params), params)
  assert updates["w"].shape == (4, 6) and calls
  assert root_optax.describe(params, muon_weight_dimension_numbers=fn).startswith("1 leaf to ROOT")
