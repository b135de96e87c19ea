"""root() on equinox models, trained the way equinox's docs show.

Every equinox Module is callable, so a tree of dimension numbers returned by
a callable ``muon_weight_dimension_numbers`` may itself be callable; it must
never be called (that would run the model's forward pass on it). Each test
compares against the same `root()` on a plain dict of the same arrays.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax

DN = root_optax.DimensionNumbers
LR = 0.02


class ConvNet(eqx.Module):
  conv: eqx.nn.Conv2d
  linear: eqx.nn.Linear

  def __init__(self, key):
    k1, k2 = jax.random.split(key)
    self.conv = eqx.nn.Conv2d(1, 4, kernel_size=3, key=k1)
    self.linear = eqx.nn.Linear(4 * 6 * 6, 3, key=k2)

  def __call__(self, x):
    return self.linear(jax.nn.relu(self.conv(x)).reshape(-1))


def _dims(params):
  """Conv kernels (out, in, h, w) and linear weights (out, in) as matrices; biases AdamW."""
  def one(x):
    if x.ndim == 4:
      return DN(reduction_axis=(1, 2, 3), output_axis=0)
    return DN(reduction_axis=1, output_axis=0) if x.ndim == 2 else None
  return jax.tree.map(one, params)


def _models():
  key = jax.random.key(0)
  return {"mlp": (eqx.nn.MLP(5, 3, 16, 2, key=key), jnp.ones((5,))),
          "conv": (ConvNet(key), jnp.ones((1, 8, 8)))}


def _as_dict(tree):
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_callable_dimension_numbers_on_an_equinox_model_match_a_plain_dict(name):
  model, x = _models()[name]
  params = eqx.filter(model, eqx.is_inexact_array)
  tx = root_optax.root(LR, ns_coeffs="muon", muon_weight_dimension_numbers=_dims)
  grads = eqx.filter_grad(lambda m: jnp.sum(m(x) ** 2))(model)
  updates, _ = tx.update(grads, tx.init(params), params)
  # The reference: the same arrays in a dict, with a dict of dimension numbers.
  flat_params, flat_grads = _as_dict(params), _as_dict(grads)
  ref = root_optax.root(LR, ns_coeffs="muon", muon_weight_dimension_numbers=_dims(flat_params))
  want, _ = ref.update(flat_grads, ref.init(flat_params), flat_params)
  got = _as_dict(updates)
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)
  text = root_optax.describe(params, muon_weight_dimension_numbers=_dims)
  assert "muon_weight_dimension_numbers" in text and "root" in text


@pytest.mark.parametrize("name", ["mlp", "conv"])
def test_equinox_training_loop_lowers_the_loss(name):
  model, x = _models()[name]
  target = jnp.arange(3.0)
  tx = root_optax.root(LR, muon_weight_dimension_numbers=_dims)
  state = tx.init(eqx.filter(model, eqx.is_inexact_array))
  loss = lambda m: jnp.sum((m(x) - target) ** 2)

  @eqx.filter_jit
  def step(model, state):
    value, grads = eqx.filter_value_and_grad(loss)(model)
    updates, state = tx.update(grads, state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), state, value

  losses = []
  for _ in range(30):
    model, state, value = step(model, state)
    losses.append(float(value))
  assert losses[-1] < 0.2 * losses[0], losses
  # Conv and linear kernels took ROOT's step: they have a momentum buffer.
  trace = root_optax.momentum_buffer(state)
  on_root = [x for x in jax.tree.leaves(trace) if not isinstance(x, optax.MaskedNode)]
  assert len(on_root) == (3 if name == "mlp" else 2)
