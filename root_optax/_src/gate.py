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

from root_optax._src import bursts
from root_optax._src import dimensions
from root_optax._src import leaf_state
from root_optax._src import normalization
from root_optax._src import stacking
from root_optax._src import validation

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
  removed = normalization.frobenius_norm(jnp.where(outside, x - clipped, 0.0))
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
    weight_dimension_numbers: Which leaves are matrices; as `root`'s
      ``muon_weight_dimension_numbers``.
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
  validation.in_range("threshold", threshold, 0.0, math.inf, low_open=True)
  validation.in_range("decay", decay, 0.0, 1.0, high_open=True)
  if burst_factor is not None:
    validation.in_range("burst_factor", burst_factor, 1.0, math.inf, low_open=True)
  validation.in_range("burst_decay", burst_decay, 0.0, 1.0, high_open=True)
  dimensions.validate_spec(weight_dimension_numbers)
  if not isinstance(name, str) or not name or name == _BURSTS:
    raise TypeError(f"name must be a non-empty string other than {_BURSTS!r}, got {name!r}")
  guard = burst_factor is not None

  def init_fn(params):
    def stats(batch, rows, cols):
      zeros = jnp.zeros([batch], jnp.float32)
      return GateStats(leaf_state.matrix_shape_array(rows, cols), zeros, zeros,
                       jnp.zeros([batch, rows], jnp.float32), jnp.zeros([batch, cols], jnp.float32))
    state = {name: leaf_state.init_stats(GateStats, stats, params, weight_dimension_numbers)}
    if guard:
      state.update(bursts.clip_bursts(burst_factor, burst_decay, weight_dimension_numbers)
                   .init(params).stats)
    return GateOutliersState(state)

  def gate_and_guard(key, stack, rows, cols, *emas):
    del key
    out, rows, cols, fraction, removed = gate_stack(stack, rows, cols, threshold, decay)
    figures = (rows, cols, fraction[:, None], removed[:, None])
    if guard:
      out, ema, burst = bursts.guard_stack(out, emas[0], burst_factor, burst_decay)
      figures += (ema[:, None], burst.astype(jnp.float32)[:, None])
    return out, figures

  def update_fn(updates, state, params=None):
    del params
    views = dimensions.matrix_leaves(updates, weight_dimension_numbers)
    olds = leaf_state.matrix_entries(state.stats[name], views)
    plan = stacking.plan(views.matrices)
    # Histories in the stacks' wide orientation: a tall matrix's rows are its stack's columns.
    rows, cols = zip(*(_oriented(s.row_scale, s.col_scale, m) for s, m in zip(olds, views.matrices)))
    old_bursts = leaf_state.matrix_entries(state.stats[_BURSTS], views) if guard else []
    emas = [[b.norm_ema for b in old_bursts]] if guard else []
    results = plan.apply(gate_and_guard, rows, cols, *emas)
    figures = plan.cut_columns({key: figures for key, (_, figures) in results.items()})
    stats = {name: leaf_state.stats_trees(GateStats, [
        _gate_stats(old, m, f) for old, m, f in zip(olds, views.matrices, figures)], views)}
    if guard:
      stats[_BURSTS] = leaf_state.stats_trees(bursts.BurstStats, [
          bursts.BurstStats(old.matrix_shape, f[4][:, 0], old.caught + f[5][:, 0].astype(jnp.int32))
          for old, f in zip(old_bursts, figures)], views)
    outs = plan.unstack({key: out for key, (out, _) in results.items()})
    return views.rebuild(outs), GateOutliersState(stats)

  return optax.GradientTransformation(init_fn, update_fn)


def _oriented(rows: jax.Array, cols: jax.Array, m: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A matrix's row and column histories as its stack sees it (swapped when it is tall)."""
  return (rows, cols) if stacking.is_wide(m) else (cols, rows)


def _gate_stats(old: GateStats, m: jax.Array, figures: tuple) -> GateStats:
  """One matrix's new `GateStats` from its cut figures ``(rows, cols, fraction, removed, ...)``."""
  rows, cols = _oriented(figures[0], figures[1], m)
  # Placed as the state they replace (e.g. replicated, as the user's
  # in_shardings say), not as XLA would propagate them from a sharded G:
  # the state's shardings stay the same from step to step.
  rows, cols = shard_alike(rows, old.row_scale)[0], shard_alike(cols, old.col_scale)[0]
  return GateStats(old.matrix_shape, figures[2][:, 0], figures[3][:, 0], rows, cols)
