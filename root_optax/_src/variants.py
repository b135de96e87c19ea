"""`root()`'s arguments made ready for its chains, before any transform is built.

``variant`` picks the values of the arguments left at None; the arguments
that go straight to optax (which does not check them) are checked here, so
that a bad one is reported under `root()`'s name when `root()` is called; the
dimension numbers and weight-decay mask are aligned with the leaves each
`optax.partition` branch sees.
"""

import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import optax

from root_optax._src import coefficients as coefficients_lib
from root_optax._src import dimensions
from root_optax._src import labels as labels_lib
from root_optax._src import quantiles
from root_optax._src import scaling as scaling_lib
from root_optax._src import validation

ROBUST = "robust"
PAPER = "paper"
VARIANTS = (ROBUST, PAPER)
# What each variant uses for the arguments left at None. The robust gate and
# burst band are the values chosen on the LM example (docs/robustness.md).
VARIANT_DEFAULTS = {
    ROBUST: dict(outlier_gate=10.0, burst_factor=4.0, quantile=1.0, ns_coeffs="muon"),
    PAPER: dict(outlier_gate=math.inf, burst_factor=math.inf, quantile=0.90, ns_coeffs="paper"),
}


class Settings(NamedTuple):
  """`root()`'s arguments resolved: what its chains are built from.

  Attributes:
    ns_coeffs: The Newton-Schulz coefficients (the variant's if None).
    outlier_gate: The gate's ``k`` (the variant's if None).
    burst_factor: The burst guard's ``f`` (the variant's if None).
    quantile: The momentum clip's ``p`` (the variant's if None).
    gate_on: Whether the outlier gate is in the chain.
    gate_burst_factor: The burst guard's ``f`` inside the gate's pass over
      the stacks; None when the guard is off.
    bursts_alone: Whether the burst guard is a stage of its own (the gate off).
    momentum_clip_on: Whether the paper's momentum clip is in the chain.
    scale_mode: `scale_by_shape`'s ``mode`` for ``consistent_rms``.
    scale_rms: `scale_by_shape`'s ``rms`` for ``consistent_rms``.
    adam_learning_rate: AdamW's learning rate (``learning_rate`` if None).
    adam_weight_decay: AdamW's weight decay (``weight_decay`` if None).
    root_dimension_numbers: The dimension numbers inside the ROOT branch
      (`branch_dimension_numbers`).
    decay_mask: The weight-decay mask usable in both branches (`branch_mask`).
  """
  ns_coeffs: coefficients_lib.CoefficientSpec
  outlier_gate: float
  burst_factor: float
  quantile: float
  gate_on: bool
  gate_burst_factor: Optional[float]
  bursts_alone: bool
  momentum_clip_on: bool
  scale_mode: str
  scale_rms: float
  adam_learning_rate: optax.ScalarOrSchedule
  adam_weight_decay: float
  root_dimension_numbers: Callable[[Any], Any]
  decay_mask: Any


def is_off(value: Any, off: float) -> bool:
  """Whether ``value`` is the Python number ``off`` that makes a stage a no-op.

  An array (e.g. from `optax.inject_hyperparams`) keeps the stage in the chain.
  """
  return isinstance(value, (int, float)) and value == off


def mask_like(mask: Any, updates: Any) -> Any:
  """Aligns a full-tree boolean mask with a tree masked by `optax.partition`.

  Inside `optax.partition`, leaves of the other branch are `optax.MaskedNode`;
  a user's mask has a bool there. This puts MaskedNode back in those places.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(
      lambda u, m: u if is_masked(u) else m, updates, mask, is_leaf=is_masked)


def branch_dimension_numbers(weight_dimension_numbers: dimensions.WeightDimNumOrFn
                             ) -> Callable[[Any], Any]:
  """Dimension numbers for the leaves `optax.partition` sends to the ROOT branch.

  Inside the branch, AdamW leaves are `optax.MaskedNode` (subtrees without
  leaves, so a user's entry there, full tree or prefix, covers nothing), and
  a ROOT leaf without dimension numbers must be 2-D. A callable is called once.
  """
  def dims_for(updates):
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = dimensions.resolve(weight_dimension_numbers, updates)
    for leaf, dims in zip(leaves, per_leaf):
      if dims is None:
        raise ValueError(
            f"a leaf of shape {leaf.shape} is labelled {labels_lib.ROOT!r} but is not 2-D; "
            f"give it muon_weight_dimension_numbers or label it {labels_lib.ADAM!r}")
    return jax.tree.unflatten(treedef, per_leaf)
  return dims_for


def branch_mask(mask: Any) -> Any:
  """A weight-decay mask (tree, callable or None) usable inside an `optax.partition` branch."""
  if mask is None or callable(mask):
    return mask
  return lambda params: mask_like(mask, params)


def _or_default(value: Any, default: Any) -> Any:
  return default if value is None else value


def _check_optax_arguments(*, learning_rate, adam_learning_rate, weight_decay, adam_weight_decay,
                           adam_eps_root, adam_b1, adam_b2, adam_eps, adam_nesterov,
                           threshold_method, threshold_rank_tolerance, weight_decay_mask,
                           param_labels, muon_weight_dimension_numbers) -> None:
  """Checks the arguments that reach optax, or no transform, unchecked."""
  for name, value in (("learning_rate", learning_rate), ("adam_learning_rate", adam_learning_rate),
                      ("weight_decay", weight_decay), ("adam_weight_decay", adam_weight_decay),
                      ("adam_eps_root", adam_eps_root)):
    if value is not None:
      validation.at_least(name, value, 0.0)
  for name, b in (("adam_b1", adam_b1), ("adam_b2", adam_b2)):
    validation.in_range(name, b, 0.0, 1.0, high_open=True)
  validation.in_range("adam_eps", adam_eps, 0.0, math.inf, low_open=True)
  validation.boolean("adam_nesterov", adam_nesterov)
  # Checked here too: with the momentum clip off they reach no transform.
  validation.one_of("threshold_method", threshold_method, quantiles.METHODS)
  validation.in_range("threshold_rank_tolerance", threshold_rank_tolerance, 0.0, 1.0,
                       high_open=True)
  validation.bool_tree("weight_decay_mask", weight_decay_mask)
  if param_labels is not None and not callable(param_labels):
    labels_lib.resolve_labels(param_labels, None)
  dimensions.validate_spec(muon_weight_dimension_numbers, "muon_weight_dimension_numbers")


def settings(*, variant: str, ns_coeffs, outlier_gate, burst_factor, quantile, threshold,
             consistent_rms, learning_rate, adam_learning_rate, weight_decay, adam_weight_decay,
             adam_eps_root, adam_b1, adam_b2, adam_eps, adam_nesterov, threshold_method,
             threshold_rank_tolerance, weight_decay_mask, param_labels,
             muon_weight_dimension_numbers) -> Settings:
  """Checks `root()`'s arguments that no transform checks, and resolves the None ones.

  Every argument is `root`'s of the same name. ``ns_coeffs``, ``outlier_gate``,
  ``burst_factor`` and ``quantile`` left at None take the variant's value;
  with ``threshold`` and ``consistent_rms`` they decide which stages are in
  the chain. The others are checked.

  Args:
    variant: ``'robust'`` or ``'paper'``: the values of the arguments left at
      None (`VARIANT_DEFAULTS`).

  Returns:
    The `Settings`.

  Raises:
    ValueError, TypeError: For an argument outside its allowed range or of the
      wrong type, naming it.
  """
  validation.one_of("variant", variant, VARIANTS)
  defaults = VARIANT_DEFAULTS[variant]
  outlier_gate = _or_default(outlier_gate, defaults["outlier_gate"])
  burst_factor = _or_default(burst_factor, defaults["burst_factor"])
  quantile = _or_default(quantile, defaults["quantile"])
  _check_optax_arguments(
      learning_rate=learning_rate, adam_learning_rate=adam_learning_rate,
      weight_decay=weight_decay, adam_weight_decay=adam_weight_decay, adam_eps_root=adam_eps_root,
      adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, adam_nesterov=adam_nesterov,
      threshold_method=threshold_method, threshold_rank_tolerance=threshold_rank_tolerance,
      weight_decay_mask=weight_decay_mask, param_labels=param_labels,
      muon_weight_dimension_numbers=muon_weight_dimension_numbers)
  gate_on, guard_on = not is_off(outlier_gate, math.inf), not is_off(burst_factor, math.inf)
  scale_mode, scale_rms = ((scaling_lib.SPECTRAL, 0.2) if consistent_rms is None
                           else (scaling_lib.RMS, consistent_rms))
  return Settings(
      ns_coeffs=_or_default(ns_coeffs, defaults["ns_coeffs"]),
      outlier_gate=outlier_gate, burst_factor=burst_factor, quantile=quantile,
      gate_on=gate_on, gate_burst_factor=burst_factor if guard_on else None,
      bursts_alone=guard_on and not gate_on,
      momentum_clip_on=not is_off(quantile, 1.0) or threshold is not None,
      scale_mode=scale_mode, scale_rms=scale_rms,
      adam_learning_rate=_or_default(adam_learning_rate, learning_rate),
      adam_weight_decay=_or_default(adam_weight_decay, weight_decay),
      root_dimension_numbers=branch_dimension_numbers(muon_weight_dimension_numbers),
      decay_mask=branch_mask(weight_decay_mask))
