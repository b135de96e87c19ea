"""The exact-order-statistic search behind `root_optax.fast_abs_quantiles`.

`search` finds the order statistic ``p (n - 1)`` of ``|m|``
without sorting ``m``: it sorts a strided sample of about 1024 entries and
reads four probes around the target rank (sample); one pass counts the
entries ``<= probe`` at each, and the two probes beside the rank bracket it
(bracket); each further pass counts at four interpolated probes and narrows
the bracket (counting passes); one last pass reads the two entries around
the rank, interpolated linearly as `numpy.quantile` (exact order statistic).
The search runs on float32 bit patterns, ordered as the non-negative values.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from root_optax._src import counting
from root_optax._src import sharding as sharding_lib
from root_optax._src import stacking

# Later passes aim this many expected misses (`_next_probes`) from the target:
# the inner pair usually moves both ends of the bracket, the outer pair
# still shrinks it when the inner pair misses.
_PROBE_REACH = (-3.0, -1.0, 1.0, 3.0)
_PROBE_MARGIN = 0.02  # an interpolated count misses by this share of the bracket (the density is not flat)
_SCATTER_MARGIN = 0.5  # ... plus this many standard deviations of the entries' scatter
_LINEAR_SPAN = 4  # interpolate values, not bit patterns, when hi <= 4 lo: the density is nearly flat there
_INF_BITS = 0x7F800000  # bit pattern of +inf, the largest non-NaN |m|
_BELOW_ALL = -1  # a bit pattern below every |m|: the first lower end, count 0

# Phases of the search loop (int32 scalars in its state).
FIRST_PASS = 0  # counts at the sample's probes (at interpolated ones for distributed matrices)
NARROWING = 1  # counts at interpolated or evenly spaced probes until every bracket is settled
DONE = 2  # the values are written


def search(stacks: list[jax.Array], quantile, rank_tolerance) -> list[jax.Array]:
  """The quantile of ``|m|`` of each matrix of ``(b, rows, cols)`` stacks: one float32 vector per stack.

  See `root_optax.fast_abs_quantiles`.
  """
  if not stacks:
    return []
  sizes = [s.shape[-2] * s.shape[-1] for s in stacks]
  ranks, fracs = zip(*(_rank_and_fraction(quantile, n) for n in sizes))
  slacks = [jnp.floor(jnp.asarray(rank_tolerance, jnp.float32) * n).astype(jnp.int32) for n in sizes]
  return _search(stacks, list(ranks), list(fracs), slacks)


def _rank_and_fraction(quantile, n: int):
  """``floor(p (n - 1))`` and its fractional part: Python numbers (float64) when ``p`` is static."""
  if isinstance(quantile, (int, float)):
    pos = float(quantile) * (n - 1)
    rank = math.floor(pos)
    return rank, pos - rank
  pos = jnp.asarray(quantile, jnp.float32) * (n - 1)
  rank = jnp.floor(pos)
  return rank.astype(jnp.int32), pos - rank


class Bracket(NamedTuple):
  """Per matrix, bit patterns ``lo < hi`` around the order statistic ``rank``.

  Invariant: ``c_lo = count(|m| <= lo) <= rank < count(|m| <= hi) = c_hi``.
  """

  lo: jax.Array
  hi: jax.Array
  c_lo: jax.Array
  c_hi: jax.Array


class SearchState(NamedTuple):
  """The carry of the search loop; vectors hold one entry per matrix of every stack."""

  phase: jax.Array  # FIRST_PASS, NARROWING or DONE
  bracket: Bracket
  bisect: jax.Array  # the next pass probes evenly spaced (the last halved nothing)
  values: jax.Array  # the results (float32), written by the last iteration


class _Problem(NamedTuple):
  """What every iteration of the search loop reads and none changes."""

  stacks: list  # (b, rows, cols) float32: m, or its |m| stored once
  sizes: list  # matrices per stack
  rank: jax.Array  # per matrix: the order statistic sought (0-based)
  frac: jax.Array  # per matrix: the interpolation fraction toward rank + 1
  slack: jax.Array  # per matrix: the rank error allowed
  sample: list  # per probe of the first pass, one bit pattern per matrix
  has_sample: jax.Array  # per matrix: False where distributed (not sampled)


def _search(stacks: list[jax.Array], ranks: list, fracs: list, slacks: list) -> list[jax.Array]:
  """Interpolated order statistics ``rank + frac`` (0-based) of each matrix's ``|m|``.

  One loop shared by all stacks counts at four probes a pass: the first
  pass at a sorted sample's order statistics (`counting.sample_probes`; from the
  whole range for distributed matrices), later ones at interpolated probes
  (`_next_probes`). The per-matrix state is one vector over every matrix of every
  stack, so the compiled body has one counting pass per stack and a fixed
  number of other operations. The loop ends once every bracket is
  `_settled`. The last iteration computes the values, so that they are
  loop outputs that XLA stores once.

  Args:
    stacks: ``(b, rows, cols)`` stacks.
    ranks: Per stack, the rank (a scalar).
    fracs: Per stack, the interpolation fraction (a scalar).
    slacks: Per stack, the rank error allowed (an int >= 0).

  Returns:
    Per stack, a float32 vector (one value per matrix).
  """
  problem = _problem(stacks, ranks, fracs, slacks)
  rank = problem.rank
  n = _per_matrix([m.shape[-2] * m.shape[-1] for m in problem.stacks], problem.sizes)
  start = Bracket(jnp.full_like(rank, _BELOW_ALL), jnp.full_like(rank, _INF_BITS), jnp.zeros_like(rank), n)
  init = SearchState(jnp.int32(FIRST_PASS), start, jnp.zeros_like(rank, bool), jnp.zeros_like(problem.frac))
  final = jax.lax.while_loop(_running, functools.partial(_iteration, problem), init)
  return _split(final.values, problem.sizes)


def _problem(stacks, ranks, fracs, slacks) -> _Problem:
  """The loop's constants: per-matrix targets, the stored ``|m|``, the sample probes."""
  sizes = [m.shape[0] for m in stacks]
  rank, frac = _per_matrix(ranks, sizes), _per_matrix(fracs, sizes, jnp.float32)
  slack = _per_matrix(slacks, sizes)
  # Every pass reads the same buffers: recomputed inside each pass, a
  # low-precision input could round differently from pass to pass (XLA drops
  # convert pairs in some fusions), and the counts would disagree. Float32
  # needs no copy, its |m| is exact.
  stacks = [m if m.dtype == jnp.float32 else counting.abs_float32(m).astype(jnp.float32) for m in stacks]
  sampled = [None if sharding_lib.is_distributed(m) else counting.sample_probes(m, r) for m, r in zip(stacks, ranks)]
  has_sample = _per_matrix([p is not None for p in sampled], sizes, bool)
  sample = [jnp.concatenate([p[k] if p is not None else jnp.zeros((s,), jnp.int32)
                             for p, s in zip(sampled, sizes)]) for k in range(len(counting.SAMPLE_SIGMAS))]
  return _Problem(stacks, sizes, rank, frac, slack, sample, has_sample)


def _split(v: jax.Array, sizes: list[int]) -> list[jax.Array]:
  """Cuts a vector over every matrix into one piece per stack."""
  return [v[o:o + n] for o, n in zip(stacking.offsets(sizes), sizes)]


def _per_matrix(values: list, sizes: list[int], dtype=jnp.int32) -> jax.Array:
  """One vector over every matrix from one scalar per stack."""
  return jnp.concatenate([jnp.broadcast_to(jnp.asarray(v, dtype), (s,)) for v, s in zip(values, sizes)])


def _running(state: SearchState) -> jax.Array:
  return state.phase < DONE


def _iteration(problem: _Problem, state: SearchState) -> SearchState:
  """A counting pass, or, once every bracket is settled, the pass that writes the values."""
  done = (state.phase == NARROWING) & jnp.all(_settled(state.bracket, problem.rank, problem.slack))
  return jax.lax.cond(done, functools.partial(_finish, problem), functools.partial(_count_pass, problem), state)


def _settled(b: Bracket, rank, slack) -> jax.Array:
  """The stopping rule: whether a matrix's bracket can give its value.

  Either one pass over ``(lo, hi]`` reads order statistics ``rank`` and
  ``rank + 1`` (`_read_pair`): ``hi`` has count ``rank + 1``, or ``(lo, hi]``
  holds just those two entries, or no bit pattern but ``hi`` is left in it.
  Or an end is within ``slack`` ranks of the quantile (`_estimate`).
  """
  readable = (b.c_hi == rank + 1) | ((b.c_lo == rank) & (b.c_hi == rank + 2)) | (b.hi - b.lo <= 1)
  lo_close, hi_close = _close_ends(b, rank, slack)
  return readable | (lo_close | hi_close)


def _rank_errors(b: Bracket, rank):
  """Upper bounds on the entries strictly between the quantile and ``lo``, and ``hi``."""
  return rank + 1 - b.c_lo, b.c_hi - rank - 1


def _close_ends(b: Bracket, rank, slack):
  """Whether ``lo`` and ``hi`` are each within ``slack`` ranks of the quantile (``slack >= 1``)."""
  below, above = _rank_errors(b, rank)
  return (slack > 0) & (b.lo >= 0) & (below <= slack), (slack > 0) & (b.hi < _INF_BITS) & (above <= slack)


def _count_pass(problem: _Problem, state: SearchState) -> SearchState:
  """Counts at four probes per matrix and narrows every bracket not yet settled."""
  b, rank = state.bracket, problem.rank
  first = (state.phase == FIRST_PASS) & problem.has_sample
  probes = [jnp.where(first, p, q) for p, q in zip(problem.sample, _next_probes(b, rank, state.bisect))]
  per_stack = [counting.counts_le(m, list(ps)) for m, ps in
               zip(problem.stacks, zip(*(_split(p, problem.sizes) for p in probes)))]
  new = _narrow(b, rank, probes, [jnp.concatenate(c) for c in zip(*per_stack)])
  halved = (2 * (new.hi - new.lo) <= b.hi - b.lo) | (2 * (new.c_hi - new.c_lo) <= b.c_hi - b.c_lo)
  halved = halved | first  # a miss of the sample probes is no reason to bisect
  keep = _settled(b, rank, problem.slack)
  bracket = Bracket(*(jnp.where(keep, old, v) for old, v in zip(b, new)))
  return SearchState(jnp.int32(NARROWING), bracket, jnp.where(keep, state.bisect, ~halved & ~state.bisect),
                     state.values)


def _finish(problem: _Problem, state: SearchState) -> SearchState:
  """Writes the values: estimated from a close end, else read off the bracket in one pass."""
  b = state.bracket
  ends = _close_ends(b, problem.rank, problem.slack)
  close = ends[0] | ends[1]
  estimate = _estimate(b, problem.rank, problem.frac, problem.slack, ends)
  # A matrix's value depends on its own search only, not on which matrices
  # share the loop (stacked or per leaf, sharded or not).
  value = jax.lax.cond(jnp.all(close), lambda: estimate,
                       lambda: jnp.where(close, estimate, _read_values(problem, b)))
  return SearchState(jnp.int32(DONE), b, state.bisect, value)


def _read_values(problem: _Problem, b: Bracket) -> jax.Array:
  """Order statistics ``rank + frac`` of settled brackets, by `_read_pair`."""
  parts = zip(*(_split(v, problem.sizes) for v in (*b, problem.rank)))
  pairs = [_read_pair(m, Bracket(*part[:4]), part[4]) for m, part in zip(problem.stacks, parts)]
  low = counting.as_float(jnp.concatenate([p[0] for p in pairs]))
  high = counting.as_float(jnp.concatenate([p[1] for p in pairs]))
  return low * (1 - problem.frac) + high * problem.frac


def _narrow(b: Bracket, rank, probes, counts) -> Bracket:
  """The tightest bracket from the old one and ascending probes.

  Counts grow with the probe: the new ends are the probes beside the rank.
  """
  lo, hi, c_lo, c_hi = b
  for v, c in zip(probes, counts):
    up = (c <= rank) & (v > lo)
    lo, c_lo = jnp.where(up, v, lo), jnp.where(up, c, c_lo)
  for v, c in zip(reversed(probes), reversed(counts)):
    down = (c > rank) & (v < hi)
    hi, c_hi = jnp.where(down, v, hi), jnp.where(down, c, c_hi)
  return Bracket(lo, hi, c_lo, c_hi)


def _end_values(b: Bracket) -> tuple[jax.Array, jax.Array]:
  """The bracket's ends as float32 values (``lo`` below every entry reads 0)."""
  return counting.as_float(jnp.maximum(b.lo, 0)), counting.as_float(b.hi)


def _linear_in_value(b: Bracket) -> jax.Array:
  """Whether to interpolate values rather than bit patterns (the ends within `_LINEAR_SPAN`)."""
  lo_v, hi_v = _end_values(b)
  return (b.lo >= 0) & (b.hi < _INF_BITS) & (hi_v <= _LINEAR_SPAN * lo_v)


def _interpolate(b: Bracket, target) -> jax.Array:
  """The bit pattern where the count should reach ``target``, linearly between the ends.

  Linear in value when the ends are close (the entries' density is nearly
  flat there), else in bit patterns, which grow like ``log |x|`` and so
  also narrow brackets spanning many binades.
  """
  share = (target - b.c_lo.astype(jnp.float32)) / jnp.maximum(b.c_hi - b.c_lo, 1).astype(jnp.float32)
  share = jnp.clip(share, 0.0, 1.0)
  lo_v, hi_v = _end_values(b)
  in_value = counting.as_bits(lo_v + (hi_v - lo_v) * share)
  in_bits = b.lo + jnp.round((b.hi - b.lo).astype(jnp.float32) * share).astype(jnp.int32)
  return jnp.where(_linear_in_value(b), in_value, in_bits)


def _next_probes(b: Bracket, rank, bisect) -> list[jax.Array]:
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
  inside = (b.c_hi - b.c_lo).astype(jnp.float32)
  margin = _PROBE_MARGIN * inside + _SCATTER_MARGIN * jnp.sqrt(inside) / 2 + 0.5
  target = rank.astype(jnp.float32) + 1.0
  probes, floor = [], b.lo + 1
  for k, reach in enumerate(_PROBE_REACH):
    aimed = _interpolate(b, target + reach * margin)
    even = b.lo + ((b.hi - b.lo).astype(jnp.float32) * (k + 1) / (len(_PROBE_REACH) + 1)).astype(jnp.int32)
    floor = jnp.clip(jnp.where(bisect, even, aimed), floor, b.hi - 1)
    probes.append(floor)
  return probes


def _estimate(b: Bracket, rank, frac, slack, ends) -> jax.Array:
  """The quantile within ``slack`` ranks from a bracket with a close end (``ends``: `_close_ends`).

  Inside a bracket of at most ``slack`` entries, interpolated as if they
  were evenly spread (every value in ``[lo, hi]`` is within ``c_hi - c_lo``
  ranks); otherwise the end with the smaller `_rank_errors` bound.
  """
  lo_close, hi_close = ends
  lo_v, hi_v = _end_values(b)
  inside = jnp.maximum(b.c_hi - b.c_lo, 1).astype(jnp.float32)
  share = jnp.clip((rank.astype(jnp.float32) + frac - b.c_lo.astype(jnp.float32) + 0.5) / inside, 0.0, 1.0)
  interpolated = lo_v + (hi_v - lo_v) * share
  below, above = _rank_errors(b, rank)
  nearer = jnp.where(lo_close & (~hi_close | (below <= above)), lo_v, hi_v)
  return jnp.where(lo_close & hi_close & (b.c_hi - b.c_lo <= slack), interpolated, nearer)


def _read_pair(m: jax.Array, b: Bracket, rank) -> tuple[jax.Array, jax.Array]:
  """Order statistics ``rank`` and ``rank + 1`` (bit patterns) from a settled bracket, one pass."""
  a = counting.abs_float32(m)
  bits = counting.as_bits(a)  # selected by bit pattern (see `counting.counts_le`), reduced as floats
  n = m.shape[-2] * m.shape[-1]
  lo_m, hi_m = stacking.over_entries(b.lo), stacking.over_entries(b.hi)
  above_lo, upto_hi, above_hi = (counting.as_bits(v) for v in counting.reduce_matrices(
      [jnp.where(bits > lo_m, a, jnp.inf), jnp.where(bits <= hi_m, a, -1.0), jnp.where(bits > hi_m, a, jnp.inf)],
      [jnp.inf, -1.0, jnp.inf], [jnp.minimum, jnp.maximum, jnp.minimum], not sharding_lib.is_distributed(m)))
  # c_hi == rank + 1: rank is the largest entry <= hi, rank + 1 the smallest above.
  # c_lo == rank, c_hi == rank + 2: the two entries in (lo, hi].
  # hi - lo <= 1: every entry in (lo, hi] equals hi.
  two_inside = (b.c_lo == rank) & (b.c_hi == rank + 2)
  low = jnp.where(b.c_hi == rank + 1, upto_hi, jnp.where(two_inside, above_lo, b.hi))
  high = jnp.where((b.c_hi >= rank + 2) & ~two_inside, b.hi, jnp.where(two_inside, upto_hi, above_hi))
  high = jnp.where(rank + 1 >= n, low, high)
  return low, high
