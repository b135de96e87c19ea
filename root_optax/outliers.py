"""Outlier suppression by soft-thresholding (ROOT's optimisation robustness).

ROOT splits the momentum ``M`` into outliers ``O = T_eps[M]`` (the soft
threshold, paper Eq. 8-9) and a base ``B = M - O``, and orthogonalises only
``B``. Elementwise ``M - T_eps[M] == clip(M, -eps, eps)``, so the base is a clip
at ``eps``, and the outlier part is discarded. ``eps`` is the ``p``-quantile of
``|M|`` over each whole matrix (reference script: ``p = 0.90``, plus 1e-9).
"""

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax import _validation
from root_optax import dimensions
from root_optax import labels as labels_lib

EXACT = "exact"
FAST = "fast"
METHODS = (EXACT, FAST)
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


_SAMPLE = 1024  # entries per matrix sampled to bracket the quantile before counting
# The first pass counts at the sample's order statistics this many binomial
# standard deviations (of the sample rank) from the target: the inner pair
# brackets the target about 2 times in 3, the outer pair almost always.
_SAMPLE_SIGMAS = (-3.5, -1.0, 1.0, 3.5)
_EXACT_FLOAT_COUNT = 2**24  # float32 counts integers exactly up to here
_INF_BITS = 0x7F800000  # bit pattern of +inf, the largest non-NaN |m|


def _abs32(m: jax.Array) -> jax.Array:
  """``|m|`` in float32 (stored once by `_search_quantiles`, read by every pass)."""
  return _abs_float32(m).astype(jnp.float32)


def _as_float(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _as_bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.int32)


def _over_entries(v: jax.Array) -> jax.Array:
  """A per-matrix vector shaped to broadcast over each matrix's entries."""
  return v[:, None, None]


def _distributed(m: jax.Array) -> bool:
  """True when ``m`` is sharded in its type or traced under a multi-device mesh.

  Such matrices are neither concatenated with others nor sampled (either
  could gather them), and use one reduction per quantity, which XLA's
  partitioner turns into an all-reduce of per-device partial results.
  """
  sharding = getattr(jax.typeof(m), "sharding", None)
  spec = getattr(sharding, "spec", None)
  if spec is not None and not sharding.mesh.empty and any(s is not None for s in spec):
    return True
  context = jax.sharding.get_abstract_mesh()
  return not context.empty and context.size > 1


def _reduce_matrices(operands, inits, ops, fused: bool = True) -> tuple[jax.Array, ...]:
  """Reduces several ``(b, rows, cols)`` operands per matrix.

  ``fused``: one variadic reduction, one pass. XLA:CPU runs it as one loop,
  while sibling reductions of one input can become a multi-output fusion
  many times slower (16x256x1024: 4.5 ms against 35 ms for two counts).
  """
  inits = tuple(jnp.asarray(v, x.dtype) for v, x in zip(inits, operands))
  if not fused:
    return tuple(jax.lax.reduce(x, v, op, (1, 2)) for x, v, op in zip(operands, inits, ops))
  combine = lambda xs, ys: tuple(op(x, y) for op, x, y in zip(ops, xs, ys))
  return jax.lax.reduce(tuple(operands), inits, combine, (1, 2))


def _counts_le(m: jax.Array, probes: list[jax.Array]) -> list[jax.Array]:
  """``count(|m| <= v)`` per matrix for each probe ``v`` (float32 bit patterns), one pass.

  On non-negative floats the order of bit patterns is the order of values,
  so the search runs on bits and compares values (``m`` is float32, or the
  stored float32 ``|m|``, see `_search_quantiles`). Counts are summed in
  float32, whose reductions XLA:CPU compiles several times faster than int32
  ones; exact up to 2**24 entries, so larger matrices are counted per row first.
  """
  a = _abs32(m)
  masks = [(a <= _over_entries(_as_float(v))).astype(jnp.float32) for v in probes]
  if m.shape[-2] * m.shape[-1] <= _EXACT_FLOAT_COUNT:
    sums = _reduce_matrices(masks, [0.0] * len(masks), [jnp.add] * len(masks), not _distributed(m))
    return [c.astype(jnp.int32) for c in sums]
  rows = [jnp.sum(x, axis=-1).astype(jnp.int32) for x in masks]
  return [jnp.sum(r, axis=-1) for r in rows]


def _sample_stride(rows: int, cols: int) -> int:
  """A stride through the flattened matrix that visits every column and row.

  A stride sharing a factor with ``cols`` would only visit some columns, so
  a matrix whose columns differ in scale would give a biased sample.
  """
  stride = max(1, (rows * cols) // _SAMPLE)
  while stride > 1 and math.gcd(stride, cols) != 1:
    stride += 1
  return stride


def _sample_probes(m: jax.Array, rank) -> list[jax.Array]:
  """Ascending bit patterns around order statistic ``rank``, read off a sorted sample.

  Sample order statistics at ``_SAMPLE_SIGMAS`` binomial standard deviations
  from ``rank / n``: the first pass counts at them. They only choose where
  to count, so a sample that misses costs passes, never accuracy. A static
  ``rank`` (a Python int) reads them by static slices, which compile faster
  than gathers.
  """
  batch, rows, cols = m.shape
  n = rows * cols
  stride = _sample_stride(rows, cols)
  k = -(-n // stride)
  sample = jnp.sort(_as_bits(_abs32(m)).reshape(batch, n)[:, ::stride], axis=-1)
  static = isinstance(rank, int)
  math_lib = np if static else jnp
  share = (math_lib.float32(rank) + 0.5) / n
  center = share * k
  sigma = math_lib.sqrt(k * share * (1 - share)) + 0.5
  probes = []
  for z in _SAMPLE_SIGMAS:
    index = math_lib.clip((math_lib.floor if z < 0 else math_lib.ceil)(center + z * sigma), 0, k - 1)
    if static:
      probes.append(sample[:, int(index)])
    else:
      probes.append(jnp.take_along_axis(sample, jnp.broadcast_to(index.astype(jnp.int32), (batch, 1)), -1)[:, 0])
  return probes


def _narrow(bracket, rank, probes, counts):
  """The tightest bracket ``(lo, hi, c_lo, c_hi)`` from the old one and ascending probes.

  Counts grow with the probe: the new ends are the probes beside the rank.
  """
  lo, hi, c_lo, c_hi = bracket
  for v, c in zip(probes, counts):
    up = (c <= rank) & (v > lo)
    lo, c_lo = jnp.where(up, v, lo), jnp.where(up, c, c_lo)
  for v, c in zip(reversed(probes), reversed(counts)):
    down = (c > rank) & (v < hi)
    hi, c_hi = jnp.where(down, v, hi), jnp.where(down, c, c_hi)
  return lo, hi, c_lo, c_hi


# A probe may miss its count by a share of the bracket's count (the density
# is not flat) plus this many standard deviations of the entries' scatter.
_PROBE_MARGIN = 0.02
_SCATTER_MARGIN = 0.5


def _linear_in_value(lo, hi):
  """Whether to interpolate values rather than bit patterns (within two binades)."""
  lo_v, hi_v = _as_float(jnp.maximum(lo, 0)), _as_float(hi)
  return (lo >= 0) & (hi < _INF_BITS) & (hi_v <= 4 * lo_v)


def _interpolate(lo, hi, c_lo, c_hi, target):
  """The bit pattern where the count should reach ``target``, linearly between the ends.

  Linear in value when the ends are close (the entries' density is nearly
  flat there), else in bit patterns, which grow like ``log |x|`` and so
  also narrow brackets spanning many binades.
  """
  share = (target - c_lo.astype(jnp.float32)) / jnp.maximum(c_hi - c_lo, 1).astype(jnp.float32)
  share = jnp.clip(share, 0.0, 1.0)
  lo_v, hi_v = _as_float(jnp.maximum(lo, 0)), _as_float(hi)
  in_value = _as_bits(lo_v + (hi_v - lo_v) * share)
  in_bits = lo + jnp.round((hi - lo).astype(jnp.float32) * share).astype(jnp.int32)
  return jnp.where(_linear_in_value(lo, hi), in_value, in_bits)


def _next_probes(lo, hi, c_lo, c_hi, rank, bisect) -> list[jax.Array]:
  """Four ascending probes around the count ``rank + 1``: two close, two far.

  Interpolation (regula falsi) predicts a probe's count to within about
  ``sqrt(c_hi - c_lo) / 2`` entries (their scatter) plus a small share of
  the bracket (the density's slope). The inner pair aims that margin below
  and above the target, so one pass usually moves both ends of the bracket
  (plain regula falsi moves one end only); the outer pair, three margins
  out, still shrinks the bracket when the inner pair misses. A pass that
  halved neither the bracket nor its count is followed by a pass at evenly
  spaced probes, so the worst case stays within about twice the passes of
  plain bisection.
  """
  inside = (c_hi - c_lo).astype(jnp.float32)
  margin = _PROBE_MARGIN * inside + _SCATTER_MARGIN * jnp.sqrt(inside) / 2 + 0.5
  target = rank.astype(jnp.float32) + 1.0
  probes, floor = [], lo + 1
  for k, reach in enumerate((-3.0, -1.0, 1.0, 3.0)):
    aimed = _interpolate(lo, hi, c_lo, c_hi, target + reach * margin)
    even = lo + ((hi - lo).astype(jnp.float32) * (k + 1) / 5).astype(jnp.int32)
    floor = jnp.clip(jnp.where(bisect, even, aimed), floor, hi - 1)
    probes.append(floor)
  return probes


def _finished(lo, hi, c_lo, c_hi, rank):
  """True once one pass over ``(lo, hi]`` yields order statistics ``rank`` and ``rank + 1``."""
  return (c_hi == rank + 1) | ((c_lo == rank) & (c_hi == rank + 2)) | (hi - lo <= 1)


def _end_errors(c_lo, c_hi, rank):
  """Upper bounds on the entries strictly between the quantile and ``lo``, and ``hi``."""
  return rank + 1 - c_lo, c_hi - rank - 1


def _close_ends(lo, hi, c_lo, c_hi, rank, slack):
  """Whether ``lo`` and ``hi`` are each within ``slack`` ranks of the quantile (``slack >= 1``)."""
  below, above = _end_errors(c_lo, c_hi, rank)
  return (slack > 0) & (lo >= 0) & (below <= slack), (slack > 0) & (hi < _INF_BITS) & (above <= slack)


def _close_enough(lo, hi, c_lo, c_hi, rank, slack):
  """True once an end of the bracket is within ``slack`` ranks of the quantile."""
  lo_close, hi_close = _close_ends(lo, hi, c_lo, c_hi, rank, slack)
  return lo_close | hi_close


def _estimate(lo, hi, c_lo, c_hi, rank, frac, slack):
  """The quantile within ``slack`` ranks, from a `_close_enough` bracket.

  Inside a bracket of at most ``slack`` entries, interpolated as if they
  were evenly spread (every value in ``[lo, hi]`` is within ``c_hi - c_lo``
  ranks); otherwise the end with the smaller `_end_errors` bound.
  """
  lo_close, hi_close = _close_ends(lo, hi, c_lo, c_hi, rank, slack)
  lo_v, hi_v = _as_float(jnp.maximum(lo, 0)), _as_float(hi)
  inside = jnp.maximum(c_hi - c_lo, 1).astype(jnp.float32)
  share = jnp.clip((rank.astype(jnp.float32) + frac - c_lo.astype(jnp.float32) + 0.5) / inside, 0.0, 1.0)
  interpolated = lo_v + (hi_v - lo_v) * share
  below, above = _end_errors(c_lo, c_hi, rank)
  nearer = jnp.where(lo_close & (~hi_close | (below <= above)), lo_v, hi_v)
  return jnp.where(lo_close & hi_close & (c_hi - c_lo <= slack), interpolated, nearer)


def _first_probes(m, rank):
  """The sample probes of `_sample_probes`, or None for a distributed matrix."""
  return None if _distributed(m) else _sample_probes(m, rank)


def _search_quantiles(ms: list[jax.Array], ranks: list, fracs: list, slacks: list) -> list[jax.Array]:
  """Interpolated order statistics ``rank + frac`` (0-based) of each matrix's ``|m|``.

  One loop shared by all stacks counts at four probes a pass: the first
  pass at a sorted sample's order statistics (`_sample_probes`; from the
  whole range for distributed matrices), later ones at interpolated probes
  (`_next_probes`). The per-matrix state is one vector over every matrix of every
  stack, so the compiled body has one counting pass per stack and a fixed
  number of other operations. Invariant: ``c_lo = count(<= lo) <= rank <
  count(<= hi) = c_hi``. The loop ends once every bracket is `_finished`
  (its two order statistics can be read) or has an end within ``slack``
  ranks of the quantile (`_close_enough`, `_estimate`). The last iteration
  computes the values, so that they are loop outputs that XLA stores once.

  Args:
    ms: ``(b, rows, cols)`` stacks.
    ranks: Per stack, the rank (a scalar).
    fracs: Per stack, the interpolation fraction (a scalar).
    slacks: Per stack, the rank error allowed (an int >= 0).

  Returns:
    Per stack, a float32 vector (one value per matrix).
  """
  sizes = [m.shape[0] for m in ms]
  split = lambda v: [v[o:o + n] for o, n in zip(labels_lib.offsets(sizes), sizes)]
  per_matrix = lambda values, dtype=jnp.int32: jnp.concatenate(
      [jnp.broadcast_to(jnp.asarray(v, dtype), (s,)) for v, s in zip(values, sizes)])
  rank, frac, slack = per_matrix(ranks), per_matrix(fracs, jnp.float32), per_matrix(slacks)
  # Every pass reads the same buffers: recomputed inside each pass, a
  # low-precision input could round differently from pass to pass (XLA drops
  # convert pairs in some fusions), and the counts would disagree. Float32
  # needs no copy, its |m| is exact.
  ms = [m if m.dtype == jnp.float32 else _abs32(m) for m in ms]
  sampled = [_first_probes(m, r) for m, r in zip(ms, ranks)]
  has_sample = per_matrix([p is not None for p in sampled], bool)
  sample = [jnp.concatenate([p[k] if p is not None else jnp.zeros((n,), jnp.int32)
                             for p, n in zip(sampled, sizes)]) for k in range(len(_SAMPLE_SIGMAS))]
  n = per_matrix([m.shape[-2] * m.shape[-1] for m in ms])
  lo, hi, c_lo, c_hi = jnp.full_like(rank, -1), jnp.full_like(rank, _INF_BITS), jnp.zeros_like(rank), n

  def search(carry):
    phase, lo, hi, c_lo, c_hi, bisect, values = carry
    first = (phase == 0) & has_sample
    probes = [jnp.where(first, p, q) for p, q in zip(sample, _next_probes(lo, hi, c_lo, c_hi, rank, bisect))]
    per_stack = [_counts_le(m, list(ps)) for m, ps in zip(ms, zip(*(split(p) for p in probes)))]
    counts = [jnp.concatenate(c) for c in zip(*per_stack)]
    lo2, hi2, c_lo2, c_hi2 = _narrow((lo, hi, c_lo, c_hi), rank, probes, counts)
    halved = (2 * (hi2 - lo2) <= hi - lo) | (2 * (c_hi2 - c_lo2) <= c_hi - c_lo)
    halved = halved | first  # a miss of the sample probes is no reason to bisect
    keep = _settled(lo, hi, c_lo, c_hi)
    pick = lambda old, new: jnp.where(keep, old, new)
    return (jnp.int32(1), pick(lo, lo2), pick(hi, hi2), pick(c_lo, c_lo2), pick(c_hi, c_hi2),
            pick(bisect, ~halved & ~bisect), values)

  def _settled(lo, hi, c_lo, c_hi):
    return _finished(lo, hi, c_lo, c_hi, rank) | _close_enough(lo, hi, c_lo, c_hi, rank, slack)

  def read(lo, hi, c_lo, c_hi):
    pairs = [_read_pair(m, *state) for m, state in
             zip(ms, zip(*(split(v) for v in (lo, hi, c_lo, c_hi, rank))))]
    low = _as_float(jnp.concatenate([p[0] for p in pairs]))
    high = _as_float(jnp.concatenate([p[1] for p in pairs]))
    return low * (1 - frac) + high * frac

  def finish(carry):
    _, lo, hi, c_lo, c_hi, bisect, _ = carry
    close = _close_enough(lo, hi, c_lo, c_hi, rank, slack)
    estimate = _estimate(lo, hi, c_lo, c_hi, rank, frac, slack)
    # A matrix's value depends on its own search only, not on which matrices
    # share the loop (stacked or per leaf, sharded or not).
    value = jax.lax.cond(jnp.all(close), lambda: estimate,
                         lambda: jnp.where(close, estimate, read(lo, hi, c_lo, c_hi)))
    return jnp.int32(2), lo, hi, c_lo, c_hi, bisect, value

  def body(carry):
    done = (carry[0] == 1) & jnp.all(_settled(*carry[1:5]))
    return jax.lax.cond(done, finish, search, carry)

  init = (jnp.int32(0), lo, hi, c_lo, c_hi, jnp.zeros_like(rank, bool), jnp.zeros_like(frac))
  final = jax.lax.while_loop(lambda carry: carry[0] < 2, body, init)
  return split(final[6])


def _read_pair(m, lo, hi, c_lo, c_hi, rank):
  """Order statistics ``rank`` and ``rank + 1`` from a finished bracket, one pass."""
  a = _abs32(m)
  b = _as_bits(a)  # selected by bit pattern (see `_counts_le`), reduced as floats
  n = m.shape[-2] * m.shape[-1]
  lo_m, hi_m = _over_entries(lo), _over_entries(hi)
  above_lo, upto_hi, above_hi = (_as_bits(v) for v in _reduce_matrices(
      [jnp.where(b > lo_m, a, jnp.inf), jnp.where(b <= hi_m, a, -1.0), jnp.where(b > hi_m, a, jnp.inf)],
      [jnp.inf, -1.0, jnp.inf], [jnp.minimum, jnp.maximum, jnp.minimum], not _distributed(m)))
  # c_hi == rank + 1: rank is the largest entry <= hi, rank + 1 the smallest above.
  # c_lo == rank, c_hi == rank + 2: the two entries in (lo, hi].
  # hi - lo <= 1: every entry in (lo, hi] equals hi.
  two_inside = (c_lo == rank) & (c_hi == rank + 2)
  low = jnp.where(c_hi == rank + 1, upto_hi, jnp.where(two_inside, above_lo, hi))
  high = jnp.where((c_hi >= rank + 2) & ~two_inside, hi, jnp.where(two_inside, upto_hi, above_hi))
  high = jnp.where(rank + 1 >= n, low, high)
  return low, high


def _rank_and_fraction(quantile, n: int):
  """``floor(p (n - 1))`` and its fractional part: Python numbers (float64) when ``p`` is static."""
  if isinstance(quantile, (int, float)):
    pos = float(quantile) * (n - 1)
    rank = math.floor(pos)
    return rank, pos - rank
  pos = jnp.asarray(quantile, jnp.float32) * (n - 1)
  rank = jnp.floor(pos)
  return rank.astype(jnp.int32), pos - rank


def fast_abs_quantiles(ms: list[jax.Array], quantile: jax.typing.ArrayLike,
                       rank_tolerance: float = 0.0) -> list[jax.Array]:
  """``quantile(|m|, p)`` over the last two axes of each ``m``, without a full sort.

  A sorted sample of about 1024 entries per matrix places four probes
  around the order statistic ``p (n - 1)``; one counting pass brackets it
  between two of them. A safeguarded interpolation search (four probes per
  counting pass, passes shared by all matrices) then narrows the bracket.
  With ``rank_tolerance=0`` it goes on until one last pass reads the two
  order statistics around ``p (n - 1)``, then interpolates linearly: the
  value of `exact_abs_quantile` up to float rounding (rank error 0),
  whatever the sample. Otherwise it stops once an end of the bracket is
  within ``floor(rank_tolerance * n)`` entries of the quantile (or the
  bracket holds that few, and it interpolates inside), so at most that many
  entries lie between the result and the exact quantile; that result
  depends on the search path, so it is not continuous in ``m``.

  Args:
    ms: Arrays of at least two dimensions.
    quantile: ``p`` in [0, 1].
    rank_tolerance: Largest rank error allowed, as a fraction of each
      matrix's entries, in [0, 1).

  Returns:
    One float32 array of shape ``m.shape[:-2]`` per input.
  """
  _check_quantile_args(ms, quantile)
  _validation.in_range("rank_tolerance", rank_tolerance, 0.0, 1.0, high_open=True)
  stacks = [m.reshape((-1,) + m.shape[-2:]) for m in ms]
  values = _fast_quantile_values(stacks, quantile, rank_tolerance)
  return [v.reshape(m.shape[:-2]) for m, v in zip(ms, values)]


def _fast_quantile_values(stacks: list[jax.Array], quantile, rank_tolerance) -> list[jax.Array]:
  """`fast_abs_quantiles` of ``(b, rows, cols)`` stacks: one float32 vector per stack."""
  if not stacks:
    return []
  sizes = [s.shape[-2] * s.shape[-1] for s in stacks]
  ranks, fracs = zip(*(_rank_and_fraction(quantile, n) for n in sizes))
  slacks = [jnp.floor(jnp.asarray(rank_tolerance, jnp.float32) * n).astype(jnp.int32) for n in sizes]
  return _search_quantiles(stacks, list(ranks), list(fracs), slacks)


def _groups(mats: list[jax.Array]) -> tuple[dict, list]:
  """`labels.stack_groups` of ``(b, rows, cols)`` batches; one group per matrix batch if any is distributed.

  Distributed matrices (see `_distributed`) are not concatenated: same-shape
  leaves may be sharded differently, and a concatenation would gather some.
  Per leaf, the fast search only all-reduces counts.
  """
  if any(_distributed(m) for m in mats):
    return dict(enumerate(mats)), [(i, [i], [m.shape[0]]) for i, m in enumerate(mats)]
  return labels_lib.stack_groups(mats)


def _stack_quantiles(stacks: dict, quantile, method: str, rank_tolerance) -> dict:
  """Per group key, the quantile of each stacked matrix (a float32 vector)."""
  if method == EXACT:
    return {key: exact_abs_quantile(stack, quantile) for key, stack in stacks.items()}
  values = _fast_quantile_values(list(stacks.values()), quantile, rank_tolerance)
  return dict(zip(stacks, values))


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
  _check_quantile_args(ms, quantile)
  _validation.one_of("method", method, METHODS)
  _validation.in_range("rank_tolerance", rank_tolerance, 0.0, 1.0, high_open=True)
  flat = [m.reshape((-1,) + m.shape[-2:]) for m in ms]
  stacks, plan = _groups(flat)
  values = _per_member(_stack_quantiles(stacks, quantile, method, rank_tolerance), plan)
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
    values = _stack_quantiles(stacks, quantile, method, rank_tolerance)
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
      base, outliers = split_outliers(stacks[key], _over_entries(eps))
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
