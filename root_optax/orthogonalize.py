"""AdaNewton: shape-specialised, batched Newton-Schulz over a parameter tree."""

from __future__ import annotations

import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from root_optax import _validation
from root_optax import coefficients as coefficients_lib
from root_optax import dimensions
from root_optax import labels as labels_lib
from root_optax import newton_schulz as ns_lib
from root_optax import sharding as sharding_lib


def _fallback_text(table: coefficients_lib.CoefficientTable, key) -> str:
  if table.fallback == coefficients_lib.NEAREST:
    near = coefficients_lib.nearest_key(key, table.shapes)
    return f"the nearest calibrated shape {near[0]}x{near[1]}"
  return "the table's default"


def ada_newton_orthogonalize(
    coefficients: coefficients_lib.CoefficientSpec = "paper",
    ns_steps: int = 5,
    normalization: Optional[str] = None,
    eps: float = 1e-7,
    compute_dtype=None,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    *,
    precision=None,
    max_gain: float = coefficients_lib.DEFAULT_MAX_GAIN,
    sharding: sharding_lib.ShardingSpec = None,
) -> optax.GradientTransformation:
  r"""Orthogonalises each matrix with Newton-Schulz, coefficients chosen by shape.

  Each matrix (transposed when tall) is normalised and iterated
  ``X <- a_t X + (b_t A + c_t A A) X``, ``A = X X^T``, for ``ns_steps`` steps,
  with ``(a_t, b_t, c_t)`` looked up by its ``(min, max)`` shape (AdaNewton,
  paper Sec. 4.2). Matrices of one shape and dtype are stacked and
  orthogonalised in one batched computation, so the compiled step holds one
  Newton-Schulz loop per distinct shape, not per leaf. Unknown shapes use the
  table's default (Muon's triple for the shipped tables), with one warning per
  shape (none when the table has no shape entries, e.g. a single triple).
  Non-matrix leaves pass through unchanged.

  Args:
    coefficients: A preset name (``'paper'``: Table 1 of the paper, the
      default; ``'reference'``: the authors' script, whose 2048x2048 triple
      sends a singular value of 0.559 to 3.31 after 5 steps and is flagged;
      ``'muon'``; ``'classic'``), a JSON/YAML path, a dict, one triple, a list
      of per-iteration triples, or a `CoefficientTable`.
    ns_steps: Newton-Schulz iterations, >= 1. A per-iteration entry with fewer
      triples repeats its last one; one with more is an error.
    normalization: ``'frobenius'`` (reference), ``'schatten4'`` or ``'aol'``;
      None uses the one the table was calibrated for.
    eps: Added to the norm in ``X / (||X||_F + eps)``, >= 0.
    compute_dtype: dtype of the iteration (default: the update's dtype).
    weight_dimension_numbers: Which leaves are matrices and how to view
      higher-rank leaves; see `root_optax.dimensions.resolve`.
    precision: Matmul precision passed to `newton_schulz`.
    max_gain: Table entries whose composed polynomial exceeds this anywhere on
      [0, 1] are reported with a warning when the transform is built.
    sharding: None: XLA partitions each stacked group as it likes. A
      `jax.sharding.Mesh`, or ``'auto'`` (the mesh of the updates' shardings
      or of `jax.set_mesh`; none: the plain path): each group is split along
      its stack axis over all devices and orthogonalised whole matrix by
      whole matrix; see `root_optax.sharding`.

  Returns:
    An `optax.GradientTransformation` with `optax.EmptyState`.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Sec. 4.2, Eq. 4.
  """
  table = coefficients_lib.load_coefficients(coefficients)
  _validation.positive_int("ns_steps", ns_steps)
  normalization = coefficients_lib.validate_normalization(normalization or table.normalization)
  _validation.at_least("eps", eps, 0.0)
  _validation.at_least("max_gain", max_gain, 1.0)
  _validation.float_dtype("compute_dtype", compute_dtype)
  _validation.matmul_precision("precision", precision)
  dimensions.validate_spec(weight_dimension_numbers)
  sharding_lib.validate_sharding(sharding)
  for key, value in table.entries().items():
    coefficients_lib.steps_schedule(value, ns_steps, f"coefficients[{table.name!r}][{key}]")
  coefficients_lib.warn_if_unsafe(table, ns_steps, max_gain)
  warned: set = set()

  def coefficients_for(key):
    coeffs, found = table.lookup(key[:2])
    # A table without shape entries (one triple for all shapes) has nothing to miss.
    if not found and table.shapes and key[:2] not in warned:
      warned.add(key[:2])
      warnings.warn(
          f"root_optax: no {table.name!r} coefficients for shape {key[0]}x{key[1]}; "
          f"using {_fallback_text(table, key[:2])}. Calibrate one with "
          f"root_optax.calibrate(shapes=[({key[0]}, {key[1]})]) to add it.",
          UserWarning, stacklevel=4)
    return coefficients_lib.steps_schedule(coeffs, ns_steps)

  def orthogonalize(stack, key):
    return ns_lib.newton_schulz(
        stack, coefficients_for(key), normalization=normalization, eps=eps,
        compute_dtype=compute_dtype, precision=precision)

  def orthogonalize_all(mats, place):
    stacks, plan = labels_lib.stack_groups(mats)
    results = {key: place(lambda s, k=key: orthogonalize(s, k), stack) for key, stack in stacks.items()}
    # One device: nothing is sharded, so the cuts may use opaque offsets.
    return labels_lib.unstack_groups(results, plan, mats, opaque_offsets=jax.device_count() == 1)

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    dims = dimensions.resolve(weight_dimension_numbers, updates)
    picked = [i for i, d in enumerate(dims) if d is not None]
    mats = [dimensions.to_matrices(leaves[i], dims[i]) for i in picked]
    outs = sharding_lib.map_groups(orthogonalize_all, mats, sharding)
    new_leaves = list(leaves)
    for i, out in zip(picked, outs):
      new_leaves[i] = dimensions.from_matrices(out, leaves[i].shape, dims[i])
    return jax.tree.unflatten(treedef, new_leaves), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
