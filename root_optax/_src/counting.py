"""Counting passes over the float32 bit patterns of ``|m|``: the quantile search's primitives.

On non-negative floats the order of the bit patterns is the order of the
values, so `quantile_search` searches for an order statistic
among int32 bit patterns and each pass counts the entries at or below a
few of them (`counts_le`); a sorted strided sample places the first pass's
probes (`sample_probes`).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from root_optax._src import sharding as sharding_lib
from root_optax._src import stacking

_SAMPLE = 1024  # entries sampled per matrix: a cheap sort that places the first probes well
# The first pass counts at the sample's order statistics this many binomial
# standard deviations (of the sample rank) from the target: the inner pair
# brackets the target about 2 times in 3, the outer pair almost always.
SAMPLE_SIGMAS = (-3.5, -1.0, 1.0, 3.5)
_EXACT_FLOAT_COUNT = 2**24  # float32 counts integers exactly up to here


def abs_float32(m: jax.Array) -> jax.Array:
  """``|m|`` in float32, or in ``m``'s dtype where that is wider."""
  dtype = jnp.promote_types(m.dtype, jnp.float32)
  return jnp.abs(m.astype(dtype))


def as_float(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def as_bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.int32)


def reduce_matrices(operands, inits, ops, fused: bool = True) -> tuple[jax.Array, ...]:
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


def counts_le(m: jax.Array, probes: list[jax.Array]) -> list[jax.Array]:
  """``count(|m| <= v)`` per matrix for each probe ``v`` (float32 bit patterns), one pass.

  On non-negative floats the order of bit patterns is the order of values,
  so the search runs on bits and compares values (``m`` is float32, or the
  stored float32 ``|m|``, see `quantile_search._problem`). Counts are summed in float32,
  whose reductions XLA:CPU compiles several times faster than int32 ones;
  exact up to 2**24 entries, so larger matrices are counted per row first.
  """
  a = abs_float32(m)
  masks = [(a <= stacking.over_entries(as_float(v))).astype(jnp.float32) for v in probes]
  if m.shape[-2] * m.shape[-1] <= _EXACT_FLOAT_COUNT:
    sums = reduce_matrices(masks, [0.0] * len(masks), [jnp.add] * len(masks), not sharding_lib.is_distributed(m))
    return [c.astype(jnp.int32) for c in sums]
  rows = [jnp.sum(x, axis=-1).astype(jnp.int32) for x in masks]
  return [jnp.sum(r, axis=-1) for r in rows]


def sample_stride(rows: int, cols: int) -> int:
  """A stride through the flattened matrix that visits every column and row.

  A stride sharing a factor with ``cols`` would only visit some columns, so
  a matrix whose columns differ in scale would give a biased sample.
  """
  stride = max(1, (rows * cols) // _SAMPLE)
  while stride > 1 and math.gcd(stride, cols) != 1:
    stride += 1
  return stride


def sample_probes(m: jax.Array, rank) -> list[jax.Array]:
  """Ascending bit patterns around order statistic ``rank``, read off a sorted sample.

  Sample order statistics at ``SAMPLE_SIGMAS`` binomial standard deviations
  from ``rank / n``: the first pass counts at them. They only choose where
  to count, so a sample that misses costs passes, never accuracy. A static
  ``rank`` (a Python int) reads them by static slices, which compile faster
  than gathers.
  """
  batch, rows, cols = m.shape
  n = rows * cols
  stride = sample_stride(rows, cols)
  k = -(-n // stride)
  sample = jnp.sort(as_bits(abs_float32(m)).reshape(batch, n)[:, ::stride], axis=-1)
  static = isinstance(rank, int)
  math_lib = np if static else jnp
  share = (math_lib.float32(rank) + 0.5) / n
  center = share * k
  sigma = math_lib.sqrt(k * share * (1 - share)) + 0.5
  probes = []
  for z in SAMPLE_SIGMAS:
    index = math_lib.clip((math_lib.floor if z < 0 else math_lib.ceil)(center + z * sigma), 0, k - 1)
    if static:
      probes.append(sample[:, int(index)])
    else:
      probes.append(jnp.take_along_axis(sample, jnp.broadcast_to(index.astype(jnp.int32), (batch, 1)), -1)[:, 0])
  return probes
