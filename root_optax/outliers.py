"""Outlier suppression by soft-thresholding (ROOT's optimisation robustness).

ROOT splits the momentum ``M`` into outliers ``O = T_eps[M]`` (the soft
threshold, paper Eq. 8-9) and a base ``B = M - O``, and orthogonalises only
``B``. Elementwise ``M - T_eps[M] == clip(M, -eps, eps)``, so the base is a clip
at ``eps``, and the outlier part is discarded. ``eps`` is the ``p``-quantile of
``|M|`` over each whole matrix (reference script: ``p = 0.90``, plus 1e-9).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from root_optax import _validation
from root_optax import dimensions

EXACT = "exact"
FAST = "fast"
METHODS = (EXACT, FAST)
REFERENCE_OFFSET = 1e-9  # the reference script adds this to the quantile
_MATRIX_AXES = (-2, -1)
# |x| as float32 bits: non-negative floats order like their int32 patterns.
_INT32_MAX = jnp.iinfo(jnp.int32).max


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


def _abs_float32(m: jax.Array) -> jax.Array:
  dtype = jnp.promote_types(m.dtype, jnp.float32)
  return jnp.abs(m.astype(dtype))


def exact_abs_quantile(m: jax.Array, quantile: jax.typing.ArrayLike) -> jax.Array:
  """``quantile(|m|, p)`` over the last two axes by a full sort.

  Linear interpolation between order statistics, as ``torch.quantile`` and
  ``numpy.quantile`` default to.

  Returns:
    An array of shape ``m.shape[:-2]``, in at least float32.
  """
  _check_quantile_args([m], quantile)
  a = _abs_float32(m)
  flat = a.reshape(a.shape[:-2] + (-1,))
  return jnp.quantile(flat, quantile, axis=-1, method="linear")


def _check_quantile_args(ms, quantile) -> None:
  _validation.in_range("quantile", quantile, 0.0, 1.0)
  for m in ms:
    if jnp.ndim(m) < 2:
      raise ValueError(f"quantiles are taken over the last two axes; got an array of shape {jnp.shape(m)}")


def _count_le(b: jax.Array, v: jax.Array) -> jax.Array:
  return jnp.sum(b <= v[..., None, None], axis=_MATRIX_AXES, dtype=jnp.int32)


def _next_probe(lo, hi, c_lo, c_hi, rank, bisect):
  """Interpolates the count ``rank + 1/2`` between the bracket ends (or bisects).

  Float bit patterns grow like ``log |x|``, so the empirical CDF over bit
  patterns is smooth and interpolation (regula falsi) lands within a few
  entries of the target rank in a handful of passes; a step that did not
  halve the bracket is followed by a bisection step, so the worst case stays
  about twice the 31 passes of plain bisection.
  """
  width = (hi - lo).astype(jnp.float32)
  share = (rank.astype(jnp.float32) + 0.5 - c_lo) / jnp.maximum(c_hi - c_lo, 1).astype(jnp.float32)
  guess = lo + jnp.round(width * share).astype(jnp.int32)
  mid = lo + (hi - lo) // 2
  return jnp.clip(jnp.where(bisect, mid, guess), lo + 1, hi - 1)


def _order_statistics(bits: list[jax.Array], ranks: list[jax.Array]) -> list[jax.Array]:
  """The ``rank``-th smallest value (0-based) of each array, without a sort.

  One loop shared by all arrays; each pass is one comparison and one count
  per matrix (a sharded matrix only reduces scalars across devices).
  Invariant: ``c_lo = count(x <= lo) <= rank < count(x <= hi) = c_hi``. The
  loop stops once no entry other than the answer can lie in ``(lo, hi]``
  below it (``c_lo == rank``: the answer is the smallest entry above ``lo``)
  or above it (``c_hi == rank + 1``: the largest entry up to ``hi``).
  """
  def finished(c):
    lo, hi, c_lo, c_hi, _, r = c
    return (c_lo == r) | (c_hi == r + 1) | (hi - lo <= 1)

  def body(carry):
    new = []
    for b, c in zip(bits, carry):
      lo, hi, c_lo, c_hi, bisect, r = c
      probe = _next_probe(lo, hi, c_lo, c_hi, r, bisect)
      count = _count_le(b, probe)
      above = count > r
      width = hi - lo
      lo2, c_lo2 = jnp.where(above, lo, probe), jnp.where(above, c_lo, count)
      hi2, c_hi2 = jnp.where(above, probe, hi), jnp.where(above, count, c_hi)
      shrunk = 2 * (hi2 - lo2) <= width
      done = finished(c)
      pick = lambda old, upd: jnp.where(done, old, upd)
      new.append((pick(lo, lo2), pick(hi, hi2), pick(c_lo, c_lo2), pick(c_hi, c_hi2),
                  pick(bisect, ~shrunk & ~bisect), r))
    return new

  def cond(carry):
    return jnp.any(jnp.stack([jnp.any(~finished(c)) for c in carry]))

  init = []
  for b, r in zip(bits, ranks):
    batch = b.shape[:-2]
    n = b.shape[-2] * b.shape[-1]
    init.append((jnp.full(batch, -1, jnp.int32), jnp.max(b, axis=_MATRIX_AXES),
                 jnp.zeros(batch, jnp.int32), jnp.full(batch, n, jnp.int32),
                 jnp.zeros(batch, bool), jnp.broadcast_to(r, batch)))
  final = jax.lax.while_loop(cond, body, init)
  out = []
  for b, (lo, hi, c_lo, c_hi, _, r) in zip(bits, final):
    above_lo = jnp.min(jnp.where(b > lo[..., None, None], b, _INT32_MAX), axis=_MATRIX_AXES)
    upto_hi = jnp.max(jnp.where(b <= hi[..., None, None], b, -1), axis=_MATRIX_AXES)
    out.append(jnp.where(c_lo == r, above_lo, jnp.where(c_hi == r + 1, upto_hi, hi)))
  return out


def _interpolated(bits, rank, frac, low):
  """Linear interpolation between order statistics ``rank`` and ``rank + 1``."""
  n = bits.shape[-2] * bits.shape[-1]
  count_low = jnp.sum(bits <= low[..., None, None], axis=_MATRIX_AXES, dtype=jnp.int32)
  above = jnp.min(jnp.where(bits > low[..., None, None], bits, _INT32_MAX), axis=_MATRIX_AXES)
  high = jnp.where((count_low > rank + 1) | (rank + 1 >= n), low, above)
  as_float = lambda v: jax.lax.bitcast_convert_type(v, jnp.float32)
  return as_float(low) * (1 - frac) + as_float(high) * frac


def _rank_and_fraction(quantile, n: int):
  """``floor(p (n - 1))`` and its fractional part; in float64 when ``p`` is static."""
  if isinstance(quantile, (int, float)):
    pos = float(quantile) * (n - 1)
    rank = math.floor(pos)
    return jnp.int32(rank), jnp.float32(pos - rank)
  pos = jnp.asarray(quantile, jnp.float32) * (n - 1)
  rank = jnp.floor(pos)
  return rank.astype(jnp.int32), pos - rank


def fast_abs_quantiles(ms: list[jax.Array], quantile: jax.typing.ArrayLike) -> list[jax.Array]:
  """``quantile(|m|, p)`` over the last two axes of each ``m``, without a sort.

  Finds the two order statistics around ``p (n - 1)`` exactly by a safeguarded
  interpolation search on the float32 bit patterns of ``|m|`` (counting
  passes shared by all matrices: about 6-10 for continuous data, at most
  about 62), then interpolates linearly: the same value as `exact_abs_quantile`
  up to float rounding (rank error 0).

  Returns:
    One float32 array of shape ``m.shape[:-2]`` per input.
  """
  _check_quantile_args(ms, quantile)
  bits, ranks, fracs = [], [], []
  for m in ms:
    a = _abs_float32(m).astype(jnp.float32)
    bits.append(jax.lax.bitcast_convert_type(a, jnp.int32))
    rank, frac = _rank_and_fraction(quantile, a.shape[-2] * a.shape[-1])
    ranks.append(rank)
    fracs.append(frac)
  lows = _order_statistics(bits, ranks)
  return [_interpolated(b, r, f, lo) for b, r, f, lo in zip(bits, ranks, fracs, lows)]


def abs_quantiles(ms: list[jax.Array], quantile, method: str = FAST) -> list[jax.Array]:
  """`exact_abs_quantile` or `fast_abs_quantiles` for a list of matrix batches.

  Leaves are not concatenated: a concatenation of differently sharded
  matrices would all-gather them, while the per-leaf counts only reduce
  scalars across devices.
  """
  if method == EXACT:
    return [exact_abs_quantile(m, quantile) for m in ms]
  return fast_abs_quantiles(ms, quantile)


def _propagate_infinities(m: jax.Array, base: jax.Array) -> jax.Array:
  """NaN where ``m`` is +-inf, as the reference's ``m - T_eps[m] = inf - inf``.

  A clip would turn an infinite momentum entry into ``eps`` and the step
  would look healthy while the momentum buffer stays infinite forever; a NaN
  makes the step visibly non-finite (and skippable by `optax.apply_if_finite`).
  """
  return jnp.where(jnp.isinf(m), jnp.asarray(jnp.nan, base.dtype), base)


class SoftThresholdState(NamedTuple):
  """State of `soft_threshold_outliers`.

  Attributes:
    outlier_fraction: With ``track_outliers=True``, a tree like the params with
      the fraction of entries clipped at the last step (0 for non-matrix
      leaves); otherwise None.
  """

  outlier_fraction: Optional[Any]


def soft_threshold_outliers(
    quantile: float = 0.90,
    threshold: Optional[float] = None,
    method: str = FAST,
    *,
    offset: float = REFERENCE_OFFSET,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    track_outliers: bool = False,
) -> optax.GradientTransformation:
  r"""Replaces each matrix ``M`` by its base ``B = M - T_eps[M] = clip(M, -eps, eps)``.

  ``eps = quantile(|M|, p) + offset`` over each whole matrix (or the fixed
  ``threshold``). Entries beyond ``eps`` are the outliers ``T_eps[M]``; they
  are discarded so that heavy-tailed momentum entries cannot dominate the
  orthogonalised update (paper Sec. 4.3, Eq. 8-10). Leaves that are not
  matrices (see ``weight_dimension_numbers``) pass through unchanged. An
  infinite entry becomes NaN (the reference's ``m - T_eps[m] = inf - inf``),
  so a non-finite momentum is never hidden by the clip.

  Args:
    quantile: ``p`` in (0, 1]: the fraction of entries kept unclipped.
    threshold: A fixed ``eps >= 0`` instead of the quantile.
    method: ``'exact'`` (a sort, as the reference) or ``'fast'`` (bisection on
      counts, no sort; the same order statistics, rank error 0).
    offset: Added to the quantile (the reference adds 1e-9), >= 0.
    weight_dimension_numbers: Which leaves are matrices and how to view
      higher-rank leaves; see `root_optax.dimensions.resolve`.
    track_outliers: Keep the fraction of clipped entries per leaf in the state.

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
  _validation.at_least("offset", offset, 0.0)
  _validation.boolean("track_outliers", track_outliers)
  dimensions.validate_spec(weight_dimension_numbers)

  def init_fn(params):
    if not track_outliers:
      return SoftThresholdState(outlier_fraction=None)
    return SoftThresholdState(jax.tree.map(lambda _: jnp.zeros([], jnp.float32), params))

  def thresholds(mats):
    if threshold is not None:
      return [jnp.full(m.shape[:-2], threshold, jnp.float32) for m in mats]
    return [q + offset for q in abs_quantiles(mats, quantile, method)]

  def update_fn(updates, state, params=None):
    del params
    leaves, treedef = jax.tree.flatten(updates)
    dims = dimensions.resolve(weight_dimension_numbers, updates)
    picked = [i for i, d in enumerate(dims) if d is not None]
    mats = [dimensions.to_matrices(leaves[i], dims[i]) for i in picked]
    new_leaves = list(leaves)
    fractions = [jnp.zeros([], jnp.float32) for _ in leaves]
    for i, m, eps in zip(picked, mats, thresholds(mats)):
      base, outliers = split_outliers(m, eps[..., None, None])
      base = _propagate_infinities(m, base)
      new_leaves[i] = dimensions.from_matrices(base, leaves[i].shape, dims[i])
      if track_outliers:
        fractions[i] = jnp.mean((outliers != 0).astype(jnp.float32))
    if track_outliers:
      state = SoftThresholdState(jax.tree.unflatten(treedef, fractions))
    return jax.tree.unflatten(treedef, new_leaves), state

  return optax.GradientTransformation(init_fn, update_fn)
