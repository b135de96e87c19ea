"""A per-matrix guard against gradient bursts, before they enter the momentum.

ROOT clips the momentum ``M = mu M + G``: one bad batch whose gradient is 30
times its usual norm dominates ``M`` for about ``log(30) / log(1 / mu)`` steps
(66 at ``mu = 0.95``), and a per-matrix quantile of ``M`` cannot remove it.
`clip_bursts` compares each incoming matrix gradient's norm with an EMA of its
own past norms, as AdaGC (per tensor) and ZClip (per step) do, and rescales a
burst to the EMA's norm. A gradient within the band passes unchanged, bit for
bit, so clean training pays nothing.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from root_optax._src import dimensions
from root_optax._src import leaf_state
from root_optax._src import normalization
from root_optax._src import stacking
from root_optax._src import validation


class BurstStats(NamedTuple):
  """Per-matrix guard state, each field a tree like the params (arrays for
  matrix leaves, `optax.MaskedNode` for the others).

  Attributes:
    matrix_shape: ``(min, max)`` of the leaf's matrices (int32), its shape group.
    norm_ema: The EMA of each matrix's gradient norm after clipping (0 until
      its first step).
    caught: Bursts rescaled so far, per matrix.
  """

  matrix_shape: jax.Array
  norm_ema: jax.Array
  caught: jax.Array


class ClipBurstsState(NamedTuple):
  """State of `clip_bursts`.

  Attributes:
    stats: ``{'bursts': BurstStats}``.
  """

  stats: dict


def _burst_step(norm, ema, factor, decay):
  """Per matrix: the gradient's scale, the new EMA and whether it was a burst."""
  seen = ema > 0
  burst = seen & (norm > factor * ema)
  scale = jnp.where(burst, ema / jnp.maximum(norm, jnp.finfo(jnp.float32).tiny), 1.0)
  # The EMA follows min(norm, factor * ema): a lasting rise of the norm is
  # tracked within a few steps, while a burst moves it by at most (1 - decay) * factor.
  tracked = jnp.where(seen, decay * ema + (1 - decay) * jnp.minimum(norm, factor * ema), norm)
  new_ema = jnp.where(jnp.isfinite(norm), tracked, ema)
  return scale, new_ema, burst


def guard_stack(g: jax.Array, ema: jax.Array, factor: float, decay: float
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The guard on a ``(b, m, n)`` stack with its ``(b,)`` norm EMAs.

  Returns:
    ``(guarded, new_ema, burst)``; ``guarded`` is ``g`` bit for bit where no
    burst was caught.
  """
  norms = normalization.frobenius_norm(g).astype(jnp.float32)
  scale, ema, burst = _burst_step(norms, ema, factor, decay)
  return g * scale.astype(g.dtype)[:, None, None], ema, burst


def clip_bursts(
    factor: float = 4.0,
    decay: float = 0.95,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
) -> optax.GradientTransformation:
  r"""Rescales a matrix gradient whose norm jumps above ``factor`` times its EMA.

  For each matrix ``G`` (non-matrix leaves pass through), with ``r`` the EMA
  of its past norms::

    if ||G||_F > factor * r:   G <- G * r / ||G||_F        (a burst)
    r <- decay * r + (1 - decay) * min(||G||_F, factor * r)

  The first step of each matrix only sets ``r``. Only a norm per matrix is
  computed (an all-reduce when sharded); a non-finite norm leaves ``G`` and
  ``r`` as they are, so `optax.apply_if_finite` can skip the step.

  Args:
    factor: The band, > 1: ordinary step-to-step changes of the norm stay
      inside it (4: a 30x burst is caught, a 2x rise of the loss is not).
    decay: EMA decay in [0, 1).
    weight_dimension_numbers: Which leaves are matrices; as `root`'s
      ``muon_weight_dimension_numbers``.

  Returns:
    An `optax.GradientTransformation` with `ClipBurstsState`.

  References:
    Wang et al., `AdaGC: Improving Training Stability for Large Language Model
    Pretraining <https://arxiv.org/abs/2502.11034>`_, 2025;
    Kumar et al., `ZClip: Adaptive Spike Mitigation for LLM Pre-Training
    <https://arxiv.org/abs/2504.02507>`_, 2025.
  """
  validation.in_range("factor", factor, 1.0, float("inf"), low_open=True)
  validation.in_range("decay", decay, 0.0, 1.0, high_open=True)
  dimensions.validate_spec(weight_dimension_numbers)

  def init_fn(params):
    def stats(batch, rows, cols):
      return BurstStats(leaf_state.matrix_shape_array(rows, cols),
                        jnp.zeros([batch], jnp.float32), jnp.zeros([batch], jnp.int32))
    return ClipBurstsState({"bursts": leaf_state.init_stats(BurstStats, stats, params,
                                                              weight_dimension_numbers)})

  def guard(key, stack, emas):
    del key
    out, ema, burst = guard_stack(stack, emas, factor, decay)
    return out, (ema[:, None], burst.astype(jnp.float32)[:, None])

  def update_fn(updates, state, params=None):
    del params
    views = dimensions.matrix_leaves(updates, weight_dimension_numbers)
    olds = leaf_state.matrix_entries(state.stats["bursts"], views)
    plan = stacking.plan(views.matrices)
    results = plan.apply(guard, [old.norm_ema for old in olds])
    figures = plan.cut_columns({key: figures for key, (_, figures) in results.items()})
    new = [BurstStats(old.matrix_shape, ema[:, 0], old.caught + burst[:, 0].astype(jnp.int32))
           for old, (ema, burst) in zip(olds, figures)]
    outs = plan.unstack({key: out for key, (out, _) in results.items()})
    return views.rebuild(outs), ClipBurstsState({"bursts": leaf_state.stats_trees(BurstStats, new, views)})

  return optax.GradientTransformation(init_fn, update_fn)
