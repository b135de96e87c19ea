"""An outlier gate that learns each gradient matrix's normal shape (`gate_outliers`).

A fixed rule such as "3 times this step's 90% magnitude quantile" treats a row
or column that is large at every step as an outlier: real gradient matrices
are heavy-tailed and structured (a channel with a massive activation makes a
whole gradient column large at every step), so such a rule clips signal at
every step. `gate_outliers` instead keeps a factored, Adafactor-style moment
of each matrix's *shape* ``|G| / mean|G|``: an EMA of its row means and one
of its column means (``O(m + n)`` state). An entry is an outlier only where
it is far beyond what its own row and column have carried in recent steps, at
this step's overall scale. Scale changes of the whole matrix are left to the
burst guard (`clip_bursts`); no sort and no data-dependent loop are needed.
"""

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from jax.experimental.shard_alike import shard_alike

from root_optax import _validation
from root_optax import bursts
from root_optax import dimensions
from root_optax import stacking

_BURSTS = "bursts"  # the key of the burst guard's figures, as `clip_bursts` keeps them


class GateStats(NamedTuple):
  """Per-matrix gate state, each field a tree like the params (arrays for
  matrix leaves, `optax.MaskedNode` for the others).

  Attributes:
    matrix_shape: ``(min, max)`` of the leaf's matrices (int32), its shape group.
    clipped_fraction: Share of each matrix's entries clipped at the last step.
    removed_norm: ``||G - gate(G)||_F`` of each matrix at the last step.
    row_scale: EMA of the row means of ``|G| / mean|G|``, ``(batch, fan_in)``
      (zeros until the matrix's first nonzero step).
    col_scale: The same over columns, ``(batch, fan_out)``.
  """

  matrix_shape: jax.Array
  clipped_fraction: jax.Array
  removed_norm: jax.Array
  row_scale: jax.Array
  col_scale: jax.Array


class GateOutliersState(NamedTuple):
  """State of `gate_outliers`.

  Attributes:
    stats: ``{name: GateStats}``, read by `root_optax.diagnostics`.
  """

  stats: dict


def _mean_abs(g: jax.Array) -> jax.Array:
  """``mean|g|`` of each ``(b, m, n)`` matrix in float32, without overflow."""
  a = jnp.abs(g)
  top = jnp.max(a, axis=(1, 2))
  safe = jnp.where(top > 0, top, 1.0)
  return top * jnp.mean(a / safe[:, None, None], axis=(1, 2))


def _expected_shape(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """The factored estimate ``r_i c_j / mean(r)`` of ``|G_ij| / mean|G|``."""
  level = jnp.mean(rows, axis=1)
  safe = jnp.where(level > 0, level, 1.0)
  return rows[:, :, None] * cols[:, None, :] / safe[:, None, None]


def gate_stack(g: jax.Array, rows: jax.Array, cols: jax.Array, threshold: float, decay: float
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """The gate on a ``(b, m, n)`` stack with its row and column histories.

  Args:
    g: Gradient matrices (any float dtype).
    rows: ``(b, m)`` EMAs of the row means of ``|g| / mean|g|``.
    cols: ``(b, n)`` EMAs of the column means.
    threshold: ``k``: entries beyond ``k r_i c_j / mean(r) mean|g|`` are
      clipped to it.
    decay: EMA decay of ``rows`` and ``cols``.

  Returns:
    ``(gated, rows, cols, clipped_fraction, removed_norm)``. ``gated`` has
    ``g``'s dtype and equals ``g`` bit for bit where nothing is clipped.
    A matrix without a history (all-zero ``rows``) is gated against its
    own row and column means, and its clipped entries start the history.
    Non-finite entries pass through (so the step is visibly non-finite) and
    leave that matrix's history unchanged, as does an all-zero matrix.
  """
  x = g.astype(jnp.float32)
  scale = _mean_abs(x)
  per_scale = jnp.where(scale > 0, scale, 1.0)[:, None, None]
  # A matrix without a history is gated against its own row and column means.
  seen = jnp.mean(rows, axis=1) > 0
  own = jnp.abs(x) / per_scale
  expected = _expected_shape(jnp.where(seen[:, None], rows, jnp.mean(own, axis=2)),
                             jnp.where(seen[:, None], cols, jnp.mean(own, axis=1)))
  limit = threshold * scale[:, None, None] * expected
  clipped = jnp.clip(x, -limit, limit)
  outside = jnp.abs(x) > limit
  gated = jnp.where(outside & jnp.isfinite(x), clipped.astype(g.dtype), g)
  shape = jnp.abs(clipped) / per_scale
  new_rows, new_cols = jnp.mean(shape, axis=2), jnp.mean(shape, axis=1)
  update = (jnp.isfinite(scale) & (scale > 0))[:, None]
  seen = seen[:, None]
  rows = jnp.where(update, jnp.where(seen, decay * rows + (1 - decay) * new_rows, new_rows), rows)
  cols = jnp.where(update, jnp.where(seen, decay * cols + (1 - decay) * new_cols, new_cols), cols)
  fraction = jnp.mean(outside.astype(jnp.float32), axis=(1, 2))
  removed = stacking.frobenius_norms(jnp.where(outside, x - clipped, 0.0))
  return gated, rows, cols, fraction, removed


def gate_outliers(
    threshold: float = 10.0,
    decay: float = 0.95,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    name: str = "gradient_outliers",
    *,
    burst_factor: Optional[float] = None,
    burst_decay: float = 0.95,
) -> optax.GradientTransformation:
  r"""Clips the entries of each matrix gradient that are abnormal for their row and column.

  For each matrix ``G`` (non-matrix leaves pass through), with ``s = mean|G|``
  and ``r``, ``c`` the EMAs of the row and column means of ``|G| / s``
  (a factored first moment, as Adafactor factors the second, of the matrix's
  shape rather than its scale)::

    v_ij = r_i c_j / mean(r)                    (the entry's expected |G_ij| / s)
    G_ij <- clip(G_ij, -k s v_ij, k s v_ij)
    r <- decay r + (1 - decay) rowmean(|G| / s),  c likewise   (clipped G)

  A row or column that is large at every step raises its own ``r_i`` or
  ``c_j`` and is not clipped; a sparse spike far beyond its row's and
  column's history is. A matrix's first step is gated against its own row
  and column means (a spike inflates those, so it is clipped less, but
  persistent structure is never clipped), and its clipped entries start the
  history. ``s`` is this step's, so a change of the whole matrix's scale is
  not clipped here (that is `clip_bursts`' job). With ``k = 10`` an entry of
  a Gaussian matrix is clipped beyond 8 standard deviations (1e-15 of them).
  Only row and column means are reduced (all-reduces when sharded); no sort.
  Matrices of one shape are gated as one stack. Entries within the limit
  pass bit for bit; a non-finite entry passes unchanged and leaves the
  history as it was, so `optax.apply_if_finite` can skip the step.

  With ``burst_factor``, the gated stacks also go through `clip_bursts`'
  guard in the same pass (the same result as chaining `clip_bursts` after
  this transform, without cutting the stacks back into leaves in between).

  Args:
    threshold: ``k`` > 0, in units of the entry's expected magnitude
      ``s v_ij`` (for a Gaussian matrix, ``0.8 k`` standard deviations).
    decay: EMA decay of the row and column histories, in [0, 1).
    weight_dimension_numbers: Which leaves are matrices; see
      `root_optax.dimensions.resolve`.
    name: Key of ``GateOutliersState.stats`` (read by `root_optax.diagnostics`).
    burst_factor: None, or `clip_bursts`' ``factor`` (> 1): run the burst
      guard on the gated gradients; its figures are ``stats['bursts']``.
    burst_decay: `clip_bursts`' ``decay``, in [0, 1).

  Returns:
    An `optax.GradientTransformation` with `GateOutliersState`.

  References:
    Shazeer & Stern, `Adafactor: Adaptive Learning Rates with Sublinear Memory
    Cost <https://arxiv.org/abs/1804.04235>`_, 2018 (the factored moment);
    Huang et al., `SPAM: Spike-Aware Adam with Momentum Reset
    <https://arxiv.org/abs/2501.06842>`_, 2025 (gating against a second moment);
    Sun et al., `Massive Activations in Large Language Models
    <https://arxiv.org/abs/2402.17762>`_, 2024 (persistently large columns).
  """
  _validation.in_range("threshold", threshold, 0.0, math.inf, low_open=True)
  _validation.in_range("decay", decay, 0.0, 1.0, high_open=True)
  if burst_factor is not None:
    _validation.in_range("burst_factor", burst_factor, 1.0, math.inf, low_open=True)
  _validation.in_range("burst_decay", burst_decay, 0.0, 1.0, high_open=True)
  dimensions.validate_spec(weight_dimension_numbers)
  if not isinstance(name, str) or not name or name == _BURSTS:
    raise TypeError(f"name must be a non-empty string other than {_BURSTS!r}, got {name!r}")
  guard = burst_factor is not None

  def init_fn(params):
    def stats(leaf, dims):
      batch, rows, cols = dimensions.matrix_shape(leaf.shape, dims)
      zeros = jnp.zeros([batch], jnp.float32)
      return GateStats(stacking.matrix_shape_array(rows, cols), zeros, zeros,
                       jnp.zeros([batch, rows], jnp.float32), jnp.zeros([batch, cols], jnp.float32))
    entries, treedef = dimensions.map_matrix_leaves(stats, params, weight_dimension_numbers)
    state = {name: stacking.trees_of_fields(GateStats, entries, treedef)}
    if guard:
      state.update(bursts.clip_bursts(burst_factor, burst_decay, weight_dimension_numbers)
                   .init(params).stats)
    return GateOutliersState(state)

  def update_fn(updates, state, params=None):
    del params
    views = stacking.matrix_leaves(updates, weight_dimension_numbers)
    olds = _matrix_entries(state.stats[name], views)
    old_bursts = _matrix_entries(state.stats[_BURSTS], views) if guard else None
    stacks, plan = stacking.stack_matrices(views.matrices)
    # Histories in the stacks' wide orientation: a tall matrix's rows are its stack's columns.
    wide = [(s.row_scale, s.col_scale) if _is_wide(m) else (s.col_scale, s.row_scale)
            for s, m in zip(olds, views.matrices)]
    outs, figures = {}, {}
    for key, members in zip(stacks, plan):
      rows = stacking.stack_vectors([wide[i][0] for i in members.indices])
      cols = stacking.stack_vectors([wide[i][1] for i in members.indices])
      out, rows, cols, fraction, removed = gate_stack(stacks[key], rows, cols, threshold, decay)
      columns = [fraction[:, None], removed[:, None]]
      if guard:
        emas = stacking.stack_vectors([old_bursts[i].norm_ema for i in members.indices])
        out, ema, burst = bursts.guard_stack(out, emas, burst_factor, burst_decay)
        columns += [ema[:, None], burst.astype(jnp.float32)[:, None]]
      outs[key] = out
      figures[key] = (rows, cols, jnp.concatenate(columns, axis=1))
    cut = _cut_figures(figures, plan, distributed=any(m.key.split is not None for m in plan))
    new_stats, new_bursts = [], []
    for j, m in enumerate(views.matrices):
      rows, cols, rest = cut[j]
      rows, cols = (rows, cols) if _is_wide(m) else (cols, rows)
      # Placed as the state they replace (e.g. replicated, as the user's
      # in_shardings say), not as XLA would propagate them from a sharded G:
      # the state's shardings stay the same from step to step.
      rows, cols = shard_alike(rows, olds[j].row_scale)[0], shard_alike(cols, olds[j].col_scale)[0]
      new_stats.append(GateStats(olds[j].matrix_shape, rest[:, 0], rest[:, 1], rows, cols))
      if guard:
        new_bursts.append(bursts.BurstStats(old_bursts[j].matrix_shape, rest[:, 2],
                                            old_bursts[j].caught + rest[:, 3].astype(jnp.int32)))
    stats = {name: stacking.trees_of_fields(
        GateStats, views.per_leaf(new_stats, optax.MaskedNode), views.treedef)}
    if guard:
      stats[_BURSTS] = stacking.trees_of_fields(
          bursts.BurstStats, views.per_leaf(new_bursts, optax.MaskedNode), views.treedef)
    opaque = jax.device_count() == 1
    return views.rebuild(stacking.unstack(outs, plan, views.matrices, opaque)), GateOutliersState(stats)

  return optax.GradientTransformation(init_fn, update_fn)


def _cut_figures(figures: dict, plan: list, distributed: bool) -> list:
  """Per matrix, ``(rows, cols, scalars)`` cut from each stack's ``(rows, cols, scalars)``.

  On one device all three are cut at once, from one ``(count, m + n + k)``
  array at opaque offsets (`stacking.per_member`); distributed matrices are
  stacks of their own, and a concatenation of differently sharded histories
  would gather them.
  """
  if distributed:
    out = [None] * sum(len(members.indices) for members in plan)
    for key, (index,), _ in plan:
      out[index] = figures[key]
    return out
  widths = {key: (f[0].shape[1], f[1].shape[1]) for key, f in figures.items()}
  joined = {key: jnp.concatenate(f, axis=1) for key, f in figures.items()}
  cut = stacking.per_member(joined, plan, jax.device_count() == 1)
  out = []
  for j in range(len(cut)):
    key = next(members.key for members in plan if j in members.indices)
    m, n = widths[key]
    out.append((cut[j][:, :m], cut[j][:, m:m + n], cut[j][:, m + n:]))
  return out


def _is_wide(m: jax.Array) -> bool:
  """Whether a ``(b, rows, cols)`` batch is stacked as it is (rows <= cols), not transposed."""
  return m.shape[1] <= m.shape[2]


def _matrix_entries(stats, views: stacking.MatrixLeaves) -> list:
  """The per-leaf entries of a stats NamedTuple of trees, for the matrix leaves only."""
  entries = stacking.per_leaf_entries(stats, views.treedef)
  return [entries[i] for i in views.indices]
