"""Compilation: a jitted train step compiles once and runs no Python per step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax
from root_optax._src import dimensions

STEPS = 20


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w1": jnp.asarray(rng.normal(size=(8, 16)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32),
            "w3": jnp.asarray(rng.normal(size=(16, 16)), jnp.float32),
            "b": jnp.zeros(16), "scale": jnp.ones(16)}
  batches = [(jnp.asarray(rng.normal(size=(32, 8)), jnp.float32), jnp.asarray(rng.normal(size=(32, 16)), jnp.float32))
             for _ in range(STEPS)]

  def loss(p, x, y):
    h = jnp.tanh(x @ p["w1"] + p["b"]) * p["scale"]
    return jnp.mean((h @ p["w2"] @ p["w3"] - y) ** 2)

  return params, batches, loss


def test_train_step_compiles_once_over_20_steps(monkeypatch):
  params, batches, loss = _problem()
  schedule = optax.warmup_cosine_decay_schedule(0.0, 0.05, 5, STEPS)
  tx = optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(learning_rate=schedule)
  state = tx.init(params)

  # Count the Python calls of the per-leaf plumbing: they may happen while
  # tracing, never per executed step.
  calls = {"resolve": 0}
  original = dimensions.resolve

  def counting_resolve(*args, **kwargs):
    calls["resolve"] += 1
    return original(*args, **kwargs)

  monkeypatch.setattr(dimensions, "resolve", counting_resolve)

  @jax.jit
  def step(params, state, x, y):
    value, grads = jax.value_and_grad(loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, value

  losses = []
  for t, (x, y) in enumerate(batches):
    params, state, value = step(params, state, x, y)
    losses.append(float(value))
    if t == 0:
      traced_calls = calls["resolve"]
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert traced_calls > 0 and calls["resolve"] == traced_calls
  assert losses[-1] < losses[0]
  # The schedule was read from the step count in the state, not baked in.
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(schedule(STEPS - 1)), rel=1e-5)
  counts = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.integer) and x.ndim == 0]
  assert counts and all(int(c) == STEPS for c in counts)


def test_schedule_is_applied_per_step_inside_one_compilation():
  # With momentum 0 and no decay, a ROOT step is lr(t) * 0.2 * sqrt(16) * U,
  # and U has all singular values g5(1) for a rank-1 gradient: the update norm
  # tracks the schedule exactly, step by step.
  schedule = optax.linear_schedule(0.1, 0.0, STEPS)
  tx = root_optax.root(schedule, beta=0.0, weight_decay=0.0, ns_coeffs=(3.4445, -4.7750, 2.0315))
  params = {"w": jnp.zeros((16, 16))}
  grad = {"w": jnp.outer(jnp.arange(1.0, 17.0), jnp.ones(16))}
  update = jax.jit(tx.update)
  state = tx.init(params)
  norms = []
  for _ in range(STEPS):
    u, state = update(grad, state, params)
    norms.append(float(jnp.linalg.norm(u["w"])))
  assert update._cache_size() == 1  # pylint: disable=protected-access
  g5 = root_optax.composed_polynomial((3.4445, -4.7750, 2.0315), np.array([1.0]), 5)[0]
  expected = [float(schedule(t)) * 0.2 * 4.0 * abs(g5) for t in range(STEPS)]
  np.testing.assert_allclose(norms, expected, rtol=1e-4, atol=1e-7)
