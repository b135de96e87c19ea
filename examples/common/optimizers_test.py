"""Tests for examples/common/optimizers.py: the optimizers the examples compare."""

import importlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from examples._test_helpers import tiny_params
from examples._test_helpers import two_steps
from examples.common import optimizers
from examples.common import runtime


def test_muon_and_root_route_embeddings_and_heads_to_adamw():
  params = tiny_params()
  dims = optimizers.muon_dimension_numbers(params)
  assert dims["embed"]["embedding"] is None and dims["lm_head"]["kernel"] is None
  assert dims["block"]["kernel"] is not None and dims["block"]["scale"] is None
  # On the embedding, Muon's and ROOT's updates equal AdamW's (same betas, lr, wd).
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  second = {
      opt: two_steps(optimizers.make_optimizer(
          ml_collections.ConfigDict(dict(optimizer=opt, lr=1e-2, root=dict(ns_coeffs="muon"))),
          base, 10), params, grads)
      for opt in optimizers.OPTIMIZERS}
  # optax's muon runs its Adam branch with its own `nesterov` flag (NAdamW).
  second["nadamw"] = two_steps(optax.adamw(
      optimizers.schedule(1e-2, 1, 10), b1=0.9, b2=0.95, weight_decay=0.1, nesterov=True),
      params, grads)
  assert np.abs(second[optimizers.ADAMW]["embed"]["embedding"]).max() > 1e-3
  for opt, ref in ((optimizers.MUON, "nadamw"), (optimizers.ROOT, optimizers.ADAMW)):
    adam = second[ref]
    for path in (("embed", "embedding"), ("lm_head", "kernel"), ("block", "scale")):
      np.testing.assert_allclose(second[opt][path[0]][path[1]], adam[path[0]][path[1]],
                                 rtol=1e-5, atol=1e-8, err_msg=f"{opt} {path}")
    # ... and differs from it on the hidden matrix (orthogonalised, RMS 0.2 * lr).
    hidden = second[opt]["block"]["kernel"]
    assert not np.allclose(hidden, adam["block"]["kernel"], rtol=0.1)
    decay = 0.1 * 1e-2 * params["block"]["kernel"]  # decoupled weight decay x lr
    rms = float(jnp.sqrt(jnp.mean(jnp.square(hidden + decay))))
    np.testing.assert_allclose(rms, 0.2 * 1e-2, rtol=0.3)  # Moonlight RMS matching


def test_unknown_optimizer_and_run_names_raise():
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  with pytest.raises(ValueError, match="optimizer must be one of"):
    optimizers.make_optimizer(ml_collections.ConfigDict(dict(optimizer="sgd", lr=1.0)), base, 10)
  config = importlib.import_module("configs.lm").get_config()
  config.only = "AdamW,nope"
  with pytest.raises(ValueError, match="nope"):
    runtime.selected_runs(config)


def test_schedule_warms_up_and_decays():
  sched = optimizers.schedule(1.0, 10, 100)
  assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
  assert abs(float(sched(100)) - 0.1) < 1e-6
  assert isinstance(optax.adamw(sched), optax.GradientTransformation)


def test_matrices_mask_spares_vectors_from_weight_decay():
  params = tiny_params()
  zeros = jax.tree.map(jnp.zeros_like, params)
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  updates = {}
  for mask in ("", "matrices"):
    run = ml_collections.ConfigDict(dict(optimizer="root", lr=1e-2,
                                         root=dict(weight_decay_mask=mask) if mask else {}))
    updates[mask] = two_steps(optimizers.make_optimizer(run, base, 10), params, zeros)
  # With a zero gradient the update is the decay alone: the mask removes it from the vector only.
  assert float(jnp.abs(updates[""]["block"]["scale"]).max()) > 0
  np.testing.assert_array_equal(updates["matrices"]["block"]["scale"], 0.0)
  np.testing.assert_array_equal(updates["matrices"]["block"]["kernel"], updates[""]["block"]["kernel"])
