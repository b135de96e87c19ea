"""Checkpoints: an orbax save/restore round trip gives a bit-identical next update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import root_optax


def _params_and_grads(seed, steps):
  rng = np.random.default_rng(seed)
  shapes = {"w": (6, 10), "stack": (3, 4, 4), "b": (10,)}
  make = lambda: {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
  return make(), [make() for _ in range(steps)]


def test_orbax_round_trip_gives_a_bit_identical_next_update(tmp_path):
  params, grads = _params_and_grads(0, 3)
  dims = {"w": root_optax.DimensionNumbers(0, 1), "stack": root_optax.DimensionNumbers(1, 2), "b": None}
  kw = dict(coefficients=(3.4445, -4.7750, 2.0315), weight_dimension_numbers=dims)
  # A schedule (a step count), injected hyper-parameters, a tracked statistic,
  # MaskedNode and EmptyState: every kind of leaf root() states hold.
  schedule = optax.cosine_decay_schedule(0.02, 10)
  tx = optax.chain(root_optax.soft_threshold_outliers(track_outliers=True),
                   optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(
                       learning_rate=schedule, momentum=0.9, **kw))
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads[:2]:
    _, state = update(g, state, params)

  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "ckpt"
  checkpointer.save(path, {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": tx.init(params)})
  restored = checkpointer.restore(path, target)

  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)
  jax.tree.map(np.testing.assert_array_equal, restored["opt_state"], state)
  expected, expected_state = update(grads[2], state, params)
  got, got_state = update(grads[2], restored["opt_state"], restored["params"])
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  jax.tree.map(np.testing.assert_array_equal, got_state, expected_state)
  # The step counter came back too: a fresh state gives a different update.
  fresh, _ = update(grads[2], tx.init(params), params)
  assert not np.array_equal(fresh["w"], expected["w"])
