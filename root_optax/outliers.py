"""Outlier suppression by soft-thresholding (ROOT's optimisation robustness).

ROOT splits the momentum ``M`` into outliers ``O = T_eps[M]`` (the soft
threshold, paper Eq. 8-9) and a base ``B = M - O``, and orthogonalises only
``B``. Elementwise ``M - T_eps[M] == clip(M, -eps, eps)``, so the base is a clip
at ``eps``, and the outlier part is discarded. ``eps`` is the ``p``-quantile of
``|M|`` over each whole matrix (reference script: ``p = 0.90``, plus 1e-9), by a
full sort or a counting search (`exact_abs_quantile`, `fast_abs_quantiles`).
"""

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from root_optax import _quantile_search
from root_optax import _validation
from root_optax import dimensions
from root_optax import labels as labels_lib
# The quantile methods and functions, re-exported: root_optax and its callers import them from here.
from root_optax._quantile_search import EXACT, FAST, METHODS  # noqa: F401
from root_optax._quantile_search import _distributed
from root_optax._quantile_search import exact_abs_quantile, fast_abs_quantiles  # noqa: F401

REFERENCE_OFFSET = 1e-9  # the reference script adds this to the quantile


def soft_threshold(m: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  """The outlier part ``T_eps[m] = sign(m) * max(|m| - eps, 0)`` (paper Eq. 9)."""
  _validation.non_negative_values("eps", eps)
  eps = jnp.asarray(eps, m.dtype)
  return jnp.sign(m) * jnp.maximum(jnp.abs(m) - eps, 0)


def split_outliers(m: jax.Array, eps: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Returns ``(base, outliers)`` with ``base + outliers == m`` and ``|base| <= eps``."""
  _validation.non_negative_values("eps", eps)
  eps = jnp.asarray(eps, m.dtype)
  base = jnp.clip(m, -eps, eps)
  return base, m - base


def _groups(mats: list[jax.Array]) -> tuple[dict, list]:
  """`labels.stack_groups` of ``(b, rows, cols)`` batches; one group per matrix batch if any is distributed.

  Distributed matrices (see `_distributed`) are not concatenated: same-shape
  leaves may be sharded differently, and a concatenation would gather some.
  Per leaf, the fast search only all-reduces counts.
  """
  if any(_distributed(m) for m in mats):
    return dict(enumerate(mats)), [(i, [i], [m.shape[0]]) for i, m in enumerate(mats)]
  return labels_lib.stack_groups(mats)


def _per_member(vectors: dict, plan: list) -> dict:
  """Cuts per-group vectors (one entry per stacked matrix) into per-input pieces."""
  out = {}
  for key, members, sizes in plan:
    for i, start, size in zip(members, labels_lib.offsets(sizes), sizes):
      out[i] = vectors[key][start:start + size]
  return out


def abs_quantiles(ms: list[jax.Array], quantile, method: str = FAST,
                  rank_tolerance: float = 0.0) -> list[jax.Array]:
  """`exact_abs_quantile` or `fast_abs_quantiles` (within ``rank_tolerance``) for a list of matrix batches.

  Matrices of one shape and dtype (up to transposition) are concatenated
  into one stack first, as `labels.stack_groups` does, so the compiled step
  holds one quantile computation per shape, not per leaf.

  Returns:
    One float32 array of shape ``m.shape[:-2]`` per input.
  """
  _quantile_search.check_quantile_args(ms, quantile)
  _validation.one_of("method", method, METHODS)
  _validation.in_range("rank_tolerance", rank_tolerance, 0.0, 1.0, high_open=True)
  flat = [m.reshape((-1,) + m.shape[-2:]) for m in ms]
  stacks, plan = _groups(flat)
  values = _per_member(_quantile_search.stack_quantiles(stacks, quantile, method, rank_tolerance), plan)
  return [values[i].reshape(m.shape[:-2]) for i, m in enumerate(ms)]


def _propagate_infinities(m: jax.Array, base: jax.Array) -> jax.Array:
  """NaN where ``m`` is +-inf, as the reference's ``m - T_eps[m] = inf - inf``.

  A clip would turn an infinite momentum entry into ``eps`` and the step
  would look healthy while the momentum buffer stays infinite forever; a NaN
  makes the step visibly non-finite (and skippable by `optax.apply_if_finite`).
  """
  return jnp.where(jnp.isinf(m), jnp.asarray(jnp.nan, base.dtype), base)


class OutlierStats(NamedTuple):
  """Figures of the last step, each a tree like the params (arrays for matrix
  leaves, `optax.MaskedNode` for the others), as optax keeps ``mu`` and ``nu``.

  Attributes:
    matrix_shape: ``(min, max)`` of each leaf's matrices (int32), its shape group.
    clipped_fraction: Share of each matrix's entries beyond the threshold.
    threshold: ``eps`` of each matrix.
    removed_norm: ``||T_eps[M]||_F`` of each matrix, the norm clipped away.
  """

  matrix_shape: jax.Array
  clipped_fraction: jax.Array
  threshold: jax.Array
  removed_norm: jax.Array


def frobenius_norms(m: jax.Array) -> jax.Array:
  """``||m||_F`` of each ``(b, rows, cols)`` matrix in float32, without overflow for huge entries."""
  a = jnp.abs(m.astype(jnp.float32))
  top = jnp.max(a, axis=(1, 2))
  safe = jnp.where(top > 0, top, 1.0)
  return top * jnp.sqrt(jnp.sum(jnp.square(a / safe[:, None, None]), axis=(1, 2)))


class SoftThresholdState(NamedTuple):
  """State of `soft_threshold_outliers`.

  Attributes:
    outlier_fraction: With ``track_outliers=True``, a tree like the params with
      the fraction of entries clipped at the last step (0 for non-matrix
      leaves); otherwise None.
    stats: With ``track_outliers=True``, ``{name: OutlierStats}`` with the
      transform's ``name`` (read by `root_optax.diagnostics`); otherwise None.
  """

  outlier_fraction: Optional[Any]
  stats: Optional[dict] = None


def trees_of_fields(cls, entries: list, treedef) -> Any:
  """One ``cls`` of param-like trees from one ``cls`` (or `optax.MaskedNode`) per leaf.

  Per-field trees of arrays, not trees of NamedTuples: containers such as
  ``nnx.Optimizer`` wrap each param-like leaf and would rebuild a NamedTuple
  leaf as another type (a retrace per step).
  """
  masked = lambda e: isinstance(e, optax.MaskedNode)
  return cls(*(jax.tree.unflatten(treedef, [e if masked(e) else e[k] for e in entries])
               for k in range(len(cls._fields))))


def per_leaf_entries(stats: NamedTuple, treedef) -> list:
  """Inverse of `trees_of_fields`: one ``type(stats)`` or `optax.MaskedNode` per leaf."""
  fields = [treedef.flatten_up_to(tree) for tree in stats]
  return [f[0] if isinstance(f[0], optax.MaskedNode) else type(stats)(*f) for f in zip(*fields)]


def matrix_shape_array(rows: int, cols: int) -> jax.Array:
  """``(min, max)`` as an int32 array: a leaf's shape group, kept in per-leaf states."""
  return jnp.asarray([min(rows, cols), max(rows, cols)], jnp.int32)


def soft_threshold_outliers(
    quantile: float = 0.90,
    threshold: Optional[float] = None,
    method: str = FAST,
    *,
    multiplier: float = 1.0,
    rank_tolerance: float = 0.0,
    offset: float = REFERENCE_OFFSET,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    track_outliers: bool = False,
    name: str = "outliers",
) -> optax.GradientTransformation:
  r"""Replaces each matrix ``M`` by its base ``B = M - T_eps[M] = clip(M, -eps, eps)``.

  ``eps = multiplier * quantile(|M|, p) + offset`` over each whole matrix (or
  the fixed ``threshold``). Entries beyond ``eps`` are the outliers
  ``T_eps[M]``; they are discarded so that heavy-tailed entries cannot
  dominate the orthogonalised update (paper Sec. 4.3, Eq. 8-10). With the
  paper's ``multiplier=1`` a share ``1 - p`` of every matrix is clipped at
  every step; with ``multiplier > 1`` the clip is a gate that only acts on
  entries far outside the bulk (``p=0.9, multiplier=3``: beyond 4.9 standard
  deviations of a Gaussian matrix, 1e-6 of its entries). Leaves that are not
  matrices (see ``weight_dimension_numbers``) pass through unchanged. An
  infinite entry becomes NaN (the reference's ``m - T_eps[m] = inf - inf``),
  so a non-finite input is never hidden by the clip.

  Args:
    quantile: ``p`` in (0, 1]: the fraction of entries kept unclipped.
    threshold: A fixed ``eps >= 0`` instead of the quantile.
    method: ``'exact'`` (a sort, as the reference) or ``'fast'`` (a counting
      search from a sorted ~1024-entry sample, no full sort; see
      `fast_abs_quantiles`).
    multiplier: ``eps`` is this multiple (>= 1) of the quantile.
    rank_tolerance: For ``'fast'``: at most this share of a matrix's entries,
      in [0, 1), lie between the threshold and the exact quantile. The
      default 0 gives the exact order statistics (the reference's value up
      to float rounding): continuous in ``M``, so sharded and single-device
      runs agree. 1e-3 clips ``1 - p`` of the entries to within 0.1 points
      in about a third of the counting passes, but the value then jumps with
      the passes taken, and runs whose inputs differ by rounding (e.g.
      differently sharded) drift apart.
    offset: Added to the threshold (the reference adds 1e-9), >= 0.
    weight_dimension_numbers: Which leaves are matrices and how to view
      higher-rank leaves; see `root_optax.dimensions.resolve`.
    track_outliers: Keep per-matrix figures of the last step in the state
      (`SoftThresholdState`; `root_optax.diagnostics` reads them).
    name: Prefix of the keys of ``SoftThresholdState.stats``.

  Returns:
    An `optax.GradientTransformation`.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Sec. 4.3.
  """
  _validation.in_range("quantile", quantile, 0.0, 1.0, low_open=True)
  if threshold is not None:
    _validation.at_least("threshold", threshold, 0.0)
  _validation.one_of("method", method, METHODS)
  _validation.at_least("multiplier", multiplier, 1.0)
  _validation.in_range("rank_tolerance", rank_tolerance, 0.0, 1.0, high_open=True)
  _validation.at_least("offset", offset, 0.0)
  _validation.boolean("track_outliers", track_outliers)
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty string, got {name!r}")
  dimensions.validate_spec(weight_dimension_numbers)

  def init_fn(params):
    if not track_outliers:
      return SoftThresholdState(outlier_fraction=None)

    def stats(leaf, dims):
      batch, rows, cols = dimensions.matrix_shape(leaf.shape, dims)
      zeros = jnp.zeros([batch], jnp.float32)
      return OutlierStats(matrix_shape_array(rows, cols), zeros, zeros, zeros)

    fractions = jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params)
    entries, treedef = dimensions.map_matrix_leaves(stats, params, weight_dimension_numbers)
    return SoftThresholdState(fractions, {name: trees_of_fields(OutlierStats, entries, treedef)})

  def thresholds(stacks):
    if threshold is not None:
      return {key: jnp.full(s.shape[:1], threshold, jnp.float32) for key, s in stacks.items()}
    values = _quantile_search.stack_quantiles(stacks, quantile, method, rank_tolerance)
    return {key: multiplier * v + offset for key, v in values.items()}

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    dims = dimensions.resolve(weight_dimension_numbers, updates)
    picked = [i for i, d in enumerate(dims) if d is not None]
    mats = [dimensions.to_matrices(leaves[i], dims[i]) for i in picked]
    # Clipped as stacks, as Newton-Schulz stacks them next (see `labels.stack_groups`).
    stacks, plan = _groups(mats)
    bases, figures = {}, {}
    for key, eps in thresholds(stacks).items():
      base, outliers = split_outliers(stacks[key], _quantile_search.over_entries(eps))
      bases[key] = _propagate_infinities(stacks[key], base)
      if track_outliers:
        figures[key] = (
            jnp.mean((outliers != 0).astype(jnp.float32), axis=(1, 2)), eps,
            frobenius_norms(outliers))
    new_leaves = list(leaves)
    for i, base in zip(picked, labels_lib.unstack_groups(bases, plan, mats)):
      new_leaves[i] = dimensions.from_matrices(base, leaves[i].shape, dims[i])
    if track_outliers:
      state = _tracked_state(figures, plan, mats, picked, leaves, treedef, name)
    return jax.tree.unflatten(treedef, new_leaves), state

  return optax.GradientTransformation(init_fn, update_fn)


def _tracked_state(figures, plan, mats, picked, leaves, treedef, name) -> SoftThresholdState:
  """Per-group figures (clipped fraction, threshold, removed norm) cut back per leaf."""
  per_input = [_per_member({k: f[n] for k, f in figures.items()}, plan) for n in range(3)]
  fractions = [jnp.zeros([], jnp.float32) for _ in leaves]
  per_leaf = [optax.MaskedNode() for _ in leaves]
  for j, i in enumerate(picked):
    fractions[i] = jnp.mean(per_input[0][j])
    per_leaf[i] = OutlierStats(matrix_shape_array(*mats[j].shape[-2:]),
                               *(values[j] for values in per_input))
  return SoftThresholdState(jax.tree.unflatten(treedef, fractions),
                            {name: trees_of_fields(OutlierStats, per_leaf, treedef)})
