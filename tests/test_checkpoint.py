"""Checkpoints: an orbax save/restore round trip gives a bit-identical next update."""

import importlib.util
import pathlib

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
  kw = dict(ns_coeffs=(3.4445, -4.7750, 2.0315), muon_weight_dimension_numbers=dims)
  # A schedule (a step count), injected hyper-parameters, a tracked statistic,
  # MaskedNode and EmptyState: every kind of leaf root() states hold.
  schedule = optax.cosine_decay_schedule(0.02, 10)
  tx = optax.chain(root_optax.soft_threshold_outliers(track_outliers=True),
                   optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(
                       learning_rate=schedule, beta=0.9, **kw))
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


def test_golden_state_restores_and_steps():
  # tests/data/golden_state: root(1e-2)'s state after 3 steps, saved by an
  # earlier version (tests/data/make_golden_state.py). A change to the state
  # layout or to the step fails here: regenerate it on purpose, with a
  # CHANGELOG note.
  spec = importlib.util.spec_from_file_location(
      "make_golden_state", pathlib.Path(__file__).parent / "data" / "make_golden_state.py")
  golden = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(golden)
  params, grads = golden.params_and_grads()
  tx = golden.optimizer()
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"opt_state": tx.init(params)})
  restored = ocp.StandardCheckpointer().restore(golden.PATH / "state", target)["opt_state"]
  assert jax.tree.structure(restored) == jax.tree.structure(tx.init(params))
  got, _ = jax.jit(tx.update)(grads[golden.STEPS], restored, params)
  want = np.load(golden.PATH / "next_update.npz")
  assert sorted(want.files) == sorted(got)
  for key in want.files:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-7)
  # The restored state carries the 3 steps: a fresh state steps differently.
  fresh, _ = jax.jit(tx.update)(grads[golden.STEPS], tx.init(params), params)
  assert not np.allclose(fresh["w"], want["w"])
