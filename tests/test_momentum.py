"""Tests for root_optax.momentum."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax


@pytest.mark.parametrize("nesterov", [True, False])
def test_trace_matches_reference_sum_form(maybe_jit, nesterov):
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(4)]
  tx = root_optax.trace(0.9, nesterov=nesterov)
  state = tx.init(jnp.zeros((4, 6)))
  update = maybe_jit(tx.update)
  buf = np.zeros((4, 6))
  for g in grads:
    out, state = update(jnp.asarray(g), state)
    buf, expected = _reference.momentum(buf, g, 0.9, nesterov)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.trace, buf, rtol=1e-5, atol=1e-6)


def test_trace_defaults_are_the_reference():
  tx = root_optax.trace()
  state = tx.init(jnp.zeros(3))
  out, _ = tx.update(jnp.ones(3), state)
  np.testing.assert_allclose(out, 1.0 + 0.95)  # nesterov: g + 0.95 * (0 + g)


def test_trace_accumulator_dtype():
  tx = root_optax.trace(accumulator_dtype=jnp.bfloat16)
  state = tx.init(jnp.zeros(3, jnp.float32))
  assert state.trace.dtype == jnp.bfloat16
  assert isinstance(state, optax.TraceState)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_trace_rejects_decay_out_of_range(decay):
  with pytest.raises(ValueError, match="decay"):
    root_optax.trace(decay)
