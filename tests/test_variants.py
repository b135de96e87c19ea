"""Tests for root_optax._src.variants: `root()`'s settings per variant and its branch masks."""

import jax.numpy as jnp
import optax

from root_optax._src import variants


def test_mask_like_restores_masked_nodes():
  masked = {"a": jnp.ones(2), "b": optax.MaskedNode()}
  assert variants.mask_like({"a": False, "b": True}, masked) == {"a": False, "b": optax.MaskedNode()}
