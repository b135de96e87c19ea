"""`root()`: the ROOT optimizer, chained from the package's transforms."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import optax

from root_optax import _validation
from root_optax import coefficients as coefficients_lib
from root_optax import dimensions
from root_optax import labels as labels_lib
from root_optax import momentum as momentum_lib
from root_optax import orthogonalize
from root_optax import outliers
from root_optax import scaling as scaling_lib
from root_optax import sharding as sharding_lib

MaskOrFn = Union[Any, Callable[[optax.Params], Any], None]


def _root_branch_dimension_numbers(weight_dimension_numbers):
  """Dimension numbers for the leaves `optax.partition` sends to the ROOT chain.

  Inside the branch, AdamW leaves are `optax.MaskedNode`; a user's tree of
  dimension numbers is aligned with that, and a ROOT leaf without dimension
  numbers must be 2-D.
  """
  def dims_for(updates):
    spec = weight_dimension_numbers
    if callable(spec) and not dimensions.is_dimension_numbers(spec):
      spec = spec(updates)
    if spec is not None and not dimensions.is_dimension_numbers(spec):
      spec = labels_lib.mask_like(spec, updates)
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = dimensions.resolve(spec, updates)
    for leaf, dims in zip(leaves, per_leaf):
      if dims is None:
        raise ValueError(
            f"a leaf of shape {leaf.shape} is labelled {labels_lib.ROOT!r} but is not "
            "2-D; give it weight_dimension_numbers or label it "
            f"{labels_lib.ADAM!r}")
    return jax.tree.unflatten(treedef, per_leaf)
  return dims_for


def _labels_fn(param_labels, weight_dimension_numbers):
  if param_labels is not None:
    labels_of = lambda params: labels_lib.resolve_labels(param_labels, params)
  elif weight_dimension_numbers is not None:
    labels_of = lambda params: labels_lib.labels_from_dimension_numbers(weight_dimension_numbers, params)
  else:
    labels_of = labels_lib.default_labels

  def labels_fn(params):
    labels = labels_of(params)
    _check_real_root_leaves(params, labels)
    return labels
  return labels_fn


def _check_real_root_leaves(params, labels) -> None:
  """ROOT's clip and Newton-Schulz are defined for real matrices only."""
  labelled, treedef = jax.tree_util.tree_flatten_with_path(labels)
  for (path, label), sub in zip(labelled, treedef.flatten_up_to(params)):
    complex_leaves = [p for p in jax.tree.leaves(sub) if jax.numpy.iscomplexobj(p)]
    if label == labels_lib.ROOT and complex_leaves:
      raise TypeError(
          f"parameter {jax.tree_util.keystr(path)} has complex dtype {complex_leaves[0].dtype}; ROOT "
          f"leaves must be real (the outlier clip needs an order, Newton-Schulz a "
          f"real Gram matrix). Label it {labels_lib.ADAM!r} with param_labels.")


def _branch_mask(mask: MaskOrFn):
  """A weight-decay mask usable inside an `optax.partition` branch."""
  if mask is None or callable(mask):
    return mask
  return lambda params: labels_lib.mask_like(mask, params)


def root(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.95,
    nesterov: bool = True,
    quantile: float = 0.90,
    threshold: Optional[float] = None,
    threshold_method: str = outliers.FAST,
    threshold_rank_tolerance: float = 0.0,
    coefficients: coefficients_lib.CoefficientSpec = "paper",
    ns_steps: int = 5,
    normalization: Optional[str] = None,
    eps: float = 1e-7,
    compute_dtype=None,
    mu_dtype=None,
    scaling: Optional[str] = scaling_lib.RMS,
    rms: float = 0.2,
    weight_decay: float = 0.1,
    weight_decay_mask: MaskOrFn = None,
    param_labels: labels_lib.LabelsOrFn = None,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_eps: float = 1e-8,
    adam_weight_decay: Optional[float] = None,
    sharding: sharding_lib.ShardingSpec = None,
) -> optax.GradientTransformation:
  r"""ROOT: Robust Orthogonalized Optimizer (He et al., 2025).

  For each matrix parameter ``W`` with gradient ``G`` (paper Algorithm 1, with
  the reference script's Nesterov momentum and scaling)::

    M   = mu M + G;   N = G + mu M          (trace)
    B   = clip(N, -eps_q, eps_q)            (soft_threshold_outliers)
    U   = NS_shape(B / ||B||_F)             (ada_newton_orthogonalize)
    W  <- W (1 - lr wd) - lr 0.2 sqrt(max(m, n)) U   (scale_by_shape, decay)

  where ``eps_q`` is the ``quantile``-quantile of ``|N|``. The weight decay is
  decoupled and multiplied by the unscaled learning rate, as in the reference
  (``w *= 1 - lr * wd``). Leaves labelled ``'adam'`` (by default every leaf
  that is not 2-D; use `route_by_path` to also send embeddings and the LM head,
  as the reference does) are trained with AdamW (betas 0.9, 0.95).

  Args:
    learning_rate: A float or an optax schedule.
    momentum: ``mu`` in [0, 1).
    nesterov: Use the Nesterov look-ahead ``G + mu M``.
    quantile: ``p`` in (0, 1] of the outlier threshold (0.90 in the paper).
    threshold: A fixed threshold instead of the quantile.
    threshold_method: ``'fast'`` (counting search, sorts only a small sample)
      or ``'exact'`` (full sort).
    threshold_rank_tolerance: For ``'fast'``, the largest share of a matrix's
      entries, in [0, 1), between the threshold and the exact quantile;
      default 0 (exact order statistics), see `soft_threshold_outliers`.
    coefficients: Newton-Schulz coefficient table; see
      `ada_newton_orthogonalize`. Default ``'paper'`` (Table 1).
    ns_steps: Newton-Schulz iterations.
    normalization: None (the table's), ``'frobenius'``, ``'schatten4'``, ``'aol'``.
    eps: Added to the Frobenius norm before Newton-Schulz.
    compute_dtype: dtype of the Newton-Schulz iteration.
    mu_dtype: dtype of the momentum buffers (ROOT and AdamW).
    scaling: ``'rms'`` (reference), ``'spectral'`` or None.
    rms: Target RMS of ``'rms'`` scaling.
    weight_decay: Decoupled weight decay, >= 0, for ROOT leaves.
    weight_decay_mask: A bool tree like the params, or a callable returning
      one; True where weight decay applies (both branches).
    param_labels: A tree of ``'root'`` / ``'adam'`` like the params, or a
      callable returning one.
    weight_dimension_numbers: `optax.contrib.MuonDimensionNumbers` per leaf
      (None for AdamW leaves), one for all leaves of rank >= 2, or a callable;
      lets stacked (scanned) layers and conv kernels be ROOT leaves.
    adam_learning_rate: AdamW's learning rate (default: ``learning_rate``).
    adam_b1: AdamW's first-moment decay.
    adam_b2: AdamW's second-moment decay.
    adam_eps: AdamW's epsilon.
    adam_weight_decay: AdamW's weight decay (default: ``weight_decay``).
    sharding: Multi-device Newton-Schulz: None (XLA's default partitioning),
      ``'auto'`` or a `jax.sharding.Mesh` (each shape group split along its
      stack axis over the mesh, whole matrices per device); see
      `ada_newton_orthogonalize` and ``docs/sharding.md``.

  Returns:
    An `optax.GradientTransformation`: `optax.partition` of the ROOT chain and
    AdamW.

  Raises:
    ValueError, TypeError: When built, for an argument outside its allowed
      range or of the wrong type; the message names the argument, the value
      and what is allowed. At ``init``, TypeError for a complex leaf labelled
      ``'root'`` (label it ``'adam'``: AdamW handles complex parameters).

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025.

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  _validation.at_least("learning_rate", learning_rate, 0.0)
  if adam_learning_rate is not None:
    _validation.at_least("adam_learning_rate", adam_learning_rate, 0.0)
  # Checked here too so that errors name root()'s arguments, not the inner ones.
  _validation.in_range("momentum", momentum, 0.0, 1.0, high_open=True)
  _validation.one_of("threshold_method", threshold_method, outliers.METHODS)
  _validation.in_range("threshold_rank_tolerance", threshold_rank_tolerance, 0.0, 1.0, high_open=True)
  _validation.one_of("scaling", scaling, scaling_lib.MODES)
  _validation.float_dtype("compute_dtype", compute_dtype)
  _validation.float_dtype("mu_dtype", mu_dtype)
  _validation.bool_tree("weight_decay_mask", weight_decay_mask)
  if param_labels is not None and not callable(param_labels):
    labels_lib.resolve_labels(param_labels, None)
  _validation.at_least("weight_decay", weight_decay, 0.0)
  if adam_weight_decay is not None:
    _validation.at_least("adam_weight_decay", adam_weight_decay, 0.0)
  for name, beta in (("adam_b1", adam_b1), ("adam_b2", adam_b2)):
    _validation.in_range(name, beta, 0.0, 1.0, high_open=True)
  _validation.in_range("adam_eps", adam_eps, 0.0, float("inf"), low_open=True)
  dimensions.validate_spec(weight_dimension_numbers)
  dims_fn = _root_branch_dimension_numbers(weight_dimension_numbers)
  mask = _branch_mask(weight_decay_mask)
  root_chain = optax.chain(
      momentum_lib.trace(momentum, nesterov, mu_dtype),
      sharding_lib.with_auto_axes(outliers.soft_threshold_outliers(
          quantile, threshold, threshold_method, rank_tolerance=threshold_rank_tolerance,
          weight_dimension_numbers=dims_fn)),
      orthogonalize.ada_newton_orthogonalize(
          coefficients, ns_steps, normalization, eps, compute_dtype,
          weight_dimension_numbers=dims_fn, sharding=sharding),
      scaling_lib.scale_by_shape(scaling, rms, weight_dimension_numbers=dims_fn),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )
  adam = optax.adamw(
      learning_rate=learning_rate if adam_learning_rate is None else adam_learning_rate,
      b1=adam_b1, b2=adam_b2, eps=adam_eps,
      weight_decay=weight_decay if adam_weight_decay is None else adam_weight_decay,
      mask=mask, mu_dtype=mu_dtype)
  return optax.partition(
      {labels_lib.ROOT: root_chain, labels_lib.ADAM: adam},
      _labels_fn(param_labels, weight_dimension_numbers))
