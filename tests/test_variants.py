"""Tests for root_optax._src.variants: `root()`'s settings per variant and its branch masks."""

import math

import jax.numpy as jnp
import optax
import pytest

from root_optax._src import variants


def test_mask_like_restores_masked_nodes():
  masked = {"a": jnp.ones(2), "b": optax.MaskedNode()}
  assert variants.mask_like({"a": False, "b": True}, masked) == {"a": False, "b": optax.MaskedNode()}


def _settings(**overrides):
  args = dict(variant="robust", ns_coeffs=None, outlier_gate=None, burst_factor=None, quantile=None,
              threshold=None, consistent_rms=0.2, learning_rate=1e-2, adam_learning_rate=None,
              weight_decay=0.1, adam_weight_decay=None, adam_eps_root=0.0, adam_b1=0.9,
              adam_b2=0.95, adam_eps=1e-8, adam_nesterov=False, threshold_method="fast",
              threshold_rank_tolerance=0.0, weight_decay_mask=None, param_labels=None,
              muon_weight_dimension_numbers=None)
  return variants.settings(**{**args, **overrides})


def test_each_variant_picks_its_stages_and_coefficients():
  robust = _settings()
  assert (robust.gate_on, robust.gate_burst_factor, robust.bursts_alone, robust.momentum_clip_on,
          robust.ns_coeffs) == (True, 4.0, False, False, "muon")
  paper = _settings(variant="paper")
  assert (paper.gate_on, paper.gate_burst_factor, paper.bursts_alone, paper.momentum_clip_on,
          paper.quantile, paper.ns_coeffs) == (False, None, False, True, 0.90, "paper")


def test_explicit_arguments_override_the_variant():
  guard_only = _settings(outlier_gate=math.inf)
  assert not guard_only.gate_on and guard_only.bursts_alone and guard_only.burst_factor == 4.0
  none = _settings(outlier_gate=math.inf, burst_factor=math.inf)
  assert not (none.gate_on or none.bursts_alone)
  fixed = _settings(threshold=0.5)  # a fixed threshold turns the clip on even at quantile 1
  assert fixed.momentum_clip_on
  spectral = _settings(consistent_rms=None)
  assert (spectral.scale_mode, spectral.scale_rms) == ("spectral", 0.2)
  adam = _settings(adam_learning_rate=3e-4)
  assert (adam.adam_learning_rate, adam.adam_weight_decay) == (3e-4, 0.1)


def test_an_array_hyperparameter_keeps_its_stage():
  # optax.inject_hyperparams passes arrays: never mistaken for the value that turns a stage off.
  assert variants.is_off(math.inf, math.inf) and variants.is_off(1.0, 1.0)
  assert not variants.is_off(jnp.asarray(math.inf), math.inf)
  assert _settings(quantile=jnp.asarray(1.0)).momentum_clip_on


def test_bad_variant_and_optax_arguments_are_refused_by_name():
  with pytest.raises(ValueError, match="variant"):
    _settings(variant="fast")
  with pytest.raises(ValueError, match="adam_b2"):
    _settings(adam_b2=1.0)
