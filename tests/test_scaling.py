"""Tests for root_optax.scaling."""

import jax.numpy as jnp
import numpy as np
import pytest

import root_optax


@pytest.mark.parametrize("mode, expected", [
    ("rms", {"w": 0.2 * np.sqrt(12), "t": 0.2 * np.sqrt(12)}),
    ("spectral", {"w": np.sqrt(12 / 3), "t": 1.0}),
    (None, {"w": 1.0, "t": 1.0}),
])
def test_scale_factors(maybe_jit, mode, expected):
  tree = {"w": jnp.ones((3, 12)), "t": jnp.ones((12, 3)), "b": jnp.ones(5)}
  tx = root_optax.scale_by_shape(mode)
  out, _ = maybe_jit(tx.update)(tree, tx.init(tree))
  np.testing.assert_allclose(out["w"], expected["w"], rtol=1e-6)
  np.testing.assert_allclose(out["t"], expected["t"], rtol=1e-6)
  np.testing.assert_array_equal(out["b"], 1.0)


def test_stacked_leaf_uses_matrix_view():
  dims = root_optax.DimensionNumbers(reduction_axis=1, output_axis=2)
  tx = root_optax.scale_by_shape("rms", rms=0.5, weight_dimension_numbers={"s": dims})
  out, _ = tx.update({"s": jnp.ones((4, 2, 8))}, tx.init(None))
  np.testing.assert_allclose(out["s"], 0.5 * np.sqrt(8), rtol=1e-6)


def test_bf16_stays_bf16():
  tx = root_optax.scale_by_shape()
  out, _ = tx.update([jnp.ones((4, 4), jnp.bfloat16)], tx.init(None))
  assert out[0].dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs, name", [({"mode": "l2"}, "mode"), ({"rms": 0.0}, "rms"), ({"rms": -1.0}, "rms")])
def test_invalid_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.scale_by_shape(**kwargs)
