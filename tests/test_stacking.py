"""Tests for root_optax._src.stacking: grouping matrices by shape into stacks and back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from root_optax._src import stacking


def test_plan_merges_orientations_and_splits_dtypes():
  mats = [jnp.ones((1, 4, 8)), jnp.ones((1, 8, 4)), jnp.ones((2, 4, 4)), jnp.ones((1, 4, 8), jnp.bfloat16),
          jnp.ones((3, 4, 8))]
  plan = stacking.plan(mats)
  G = stacking.GroupKey
  assert [(m.key, m.indices, m.sizes) for m in plan.members] == [
      (G(4, 8, "float32"), [0, 1, 4], [1, 1, 3]), (G(4, 4, "float32"), [2], [2]),
      (G(4, 8, "bfloat16"), [3], [1])]
  assert plan.stacks[G(4, 8, "float32")].shape == (5, 4, 8)
  assert G(4, 8, "float32").shape == (4, 8)
  assert not plan.split
  # Cut back: every input in its own shape (the tall one transposed back).
  for out, m in zip(plan.unstack(plan.stacks), mats):
    np.testing.assert_array_equal(out, m)
  figures = plan.cut_columns({k: (s[:, 0, :1], s[:, 0, :2]) for k, s in plan.stacks.items()})
  assert [tuple(f.shape for f in fig) for fig in figures] == [
      ((1, 1), (1, 2)), ((1, 1), (1, 2)), ((2, 1), (2, 2)), ((1, 1), (1, 2)), ((3, 1), (3, 2))]


@pytest.mark.parametrize("opaque", [False, True])
def test_unstack_with_opaque_offsets_matches_static_cuts(opaque):
  from root_optax._src import stacking
  rng = np.random.default_rng(1)
  mats = [jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((2, 3, 5), (1, 5, 3), (4, 3, 5), (1, 2, 2))]
  plan = stacking.plan(mats)
  doubled = {k: 2 * v for k, v in plan.stacks.items()}
  got = jax.jit(lambda d: plan.unstack(d, opaque_offsets=opaque))(doubled)
  for g, m in zip(got, mats):
    np.testing.assert_array_equal(g, 2 * np.asarray(m))
