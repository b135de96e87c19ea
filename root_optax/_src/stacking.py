"""Matrix stacks: matrices of one shape batched into one array, and cut back.

Every stage of ROOT acts on each matrix independently, so matrices of one
``(min(rows, cols), max(rows, cols))`` shape and dtype are turned wide
(rows <= cols, the Gram matrix is then the small one) and concatenated along
a stack axis. The traced program then holds one copy of each computation per
distinct shape, not one per leaf; a 48-layer GPT has 4 shapes and 192 matrices.

One `StackPlan` serves every stage: `plan` groups the matrices (and decides
which must not share a stack when they are sharded), `StackPlan.apply` runs a
function per stack (whole matrices per device on the sharded path,
`sharding.shard_batch`), and `StackPlan.unstack` / `StackPlan.cut` put results
and per-matrix figures back in input order.
"""

import functools
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from root_optax._src import sharding


class GroupKey(NamedTuple):
  """The stack a matrix goes to: its wide shape, its dtype, and a split tag.

  Attributes:
    min: ``min(rows, cols)``.
    max: ``max(rows, cols)``.
    dtype: The dtype's name.
    split: Matrices of one shape with different tags are stacked apart: the
      sharding spec on the sharded path (a stack needs one sharding), or an
      index where matrices must not be concatenated at all.
  """
  min: int
  max: int
  dtype: str
  split: Hashable = None

  @property
  def shape(self) -> tuple[int, int]:
    """``(min, max)``, the key of coefficient tables."""
    return self.min, self.max


class Members(NamedTuple):
  """Which inputs a stack holds, in stack order, and how many matrices each."""
  key: GroupKey
  indices: list[int]
  sizes: list[int]


def group_key(m: jax.Array, split: Hashable = None) -> GroupKey:
  """The `GroupKey` of a ``(..., rows, cols)`` matrix batch."""
  rows, cols = m.shape[-2:]
  return GroupKey(min(rows, cols), max(rows, cols), jnp.dtype(m.dtype).name, split)


def is_wide(m: jax.Array) -> bool:
  """Whether a ``(..., rows, cols)`` batch is stacked as it is (rows <= cols), not transposed."""
  return m.shape[-2] <= m.shape[-1]


def orient_wide(m: jax.Array) -> jax.Array:
  """Makes each matrix wide (rows <= cols): the Gram matrix is then the small one."""
  return m if is_wide(m) else jnp.swapaxes(m, -1, -2)


def offsets(sizes: Sequence[int]) -> list[int]:
  """Where each of consecutive parts of these sizes starts."""
  return [sum(sizes[:i]) for i in range(len(sizes))]


def over_entries(v: jax.Array) -> jax.Array:
  """A per-matrix vector shaped to broadcast over each matrix of a stack."""
  return v[:, None, None]


def concatenate(parts: Sequence[jax.Array]) -> jax.Array:
  """Arrays along their leading (matrix) axis; one part is returned as it is."""
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)


class StackPlan:
  """Matrix batches grouped into stacks by `plan`, and how to cut results back.

  Attributes:
    members: Per stack, which inputs it holds (`Members`), in first-seen order.
    inputs: The ``(batch, rows, cols)`` inputs, in input order.
    mesh: The sharded path's mesh (`sharding.find_mesh`), or None.
  """

  def __init__(self, members: list[Members], inputs: list[jax.Array],
               mesh: Optional[sharding.AnyMesh] = None):
    self.members, self.inputs, self.mesh = members, inputs, mesh

  @functools.cached_property
  def stacks(self) -> dict[GroupKey, jax.Array]:
    """Per `GroupKey`, the ``(count, min, max)`` stack of its members, oriented wide."""
    return {m.key: concatenate([orient_wide(self.inputs[i]) for i in m.indices])
            for m in self.members}

  @property
  def keys(self) -> list[GroupKey]:
    return [m.key for m in self.members]

  @property
  def split(self) -> bool:
    """Whether some matrices of one shape are in different stacks (sharded inputs)."""
    return any(m.key.split is not None for m in self.members)

  def gather(self, per_input: Sequence[jax.Array]) -> dict[GroupKey, jax.Array]:
    """Per-input arrays (leading axis: the input's matrices) concatenated per stack."""
    return {m.key: concatenate([per_input[i] for i in m.indices]) for m in self.members}

  def apply(self, fn: Callable[..., Any], *per_input: Sequence[jax.Array]) -> dict[GroupKey, Any]:
    """``fn(key, stack, *gathered)`` for each stack.

    Args:
      fn: Acts on each matrix of the stack independently. With a mesh it
        takes only ``(key, stack)`` and returns an array of the stack's shape,
        run on whole matrices per device (`sharding.shard_batch`).
      *per_input: Lists of per-input arrays (e.g. state rows), gathered per
        stack (`gather`) and passed after the stack.

    Returns:
      ``{key: fn's result}``.
    """
    if self.mesh is not None:
      if per_input:
        raise ValueError("on the sharded path a stack function takes only (key, stack)")
      return {key: sharding.shard_batch(functools.partial(fn, key), stack, self.mesh, key.split)
              for key, stack in self.stacks.items()}
    gathered = [self.gather(values) for values in per_input]
    return {key: fn(key, stack, *(g[key] for g in gathered)) for key, stack in self.stacks.items()}

  def map(self, fn: Callable[[GroupKey, jax.Array], jax.Array]) -> list[jax.Array]:
    """`apply` then `unstack`: ``fn`` per stack, results back per input.

    Under Explicit mesh axes this runs inside `sharding.keep_shardings`
    (XLA moves data freely inside, each result gets its input's sharding);
    the grouping was decided from the inputs' shardings before.
    """
    def run(mats):
      inner = StackPlan(self.members, mats, self.mesh)
      return inner.unstack(inner.apply(fn))
    return sharding.keep_shardings(run, self.inputs)

  def unstack(self, results: dict[GroupKey, jax.Array], opaque_offsets: bool = True
              ) -> list[jax.Array]:
    """Per-stack results of the stacks' shapes back to one array per input, in input order
    and shape; ``opaque_offsets``: see `cut`."""
    out = self.cut(results, opaque_offsets)
    return [part if part.shape == m.shape else jnp.swapaxes(part, -1, -2)
            for part, m in zip(out, self.inputs)]

  def cut(self, per_stack: dict[GroupKey, jax.Array], opaque_offsets: bool = True) -> list:
    """Per-stack arrays (leading axis: the stack's matrices) cut into per-input pieces.

    Args:
      per_stack: ``{key: array}`` with one leading entry per matrix of the stack.
      opaque_offsets: On one device, cut at offsets XLA cannot constant-fold
        (`_opaque_offsets`), so that every cut of one shape compiles to one
        shared kernel. Ignored with several devices: a dynamic offset into a
        sharded axis would gather it.
    """
    cuts = [(m.key, i, start, size) for m in self.members
            for i, start, size in zip(m.indices, offsets(m.sizes), m.sizes)]
    like = next(iter(per_stack.values()), None)
    if opaque_offsets and jax.device_count() == 1 and len(cuts) > 1 and like is not None and like.size:
      starts = _opaque_offsets([start for _, _, start, _ in cuts], like)
      cuts = [(key, i, start, size) for (key, i, _, size), start in zip(cuts, starts)]
    out = [None] * len(self.inputs)
    for key, i, start, size in cuts:
      out[i] = _cut(per_stack[key], start, size)
    return out

  def cut_columns(self, per_stack: dict[GroupKey, tuple[jax.Array, ...]],
                  opaque_offsets: bool = True) -> list[tuple]:
    """Per-stack tuples of ``(count, width)`` figures cut into per-input tuples.

    On one stack per shape the columns are joined and cut once (`cut`, with
    ``opaque_offsets``): one cut per input instead of one per figure. Split
    stacks hold one input each and are returned as they are: a
    concatenation of differently sharded figures would gather them.
    """
    if self.split:
      out = [None] * len(self.inputs)
      for m in self.members:
        (index,) = m.indices
        out[index] = per_stack[m.key]
      return out
    widths = {key: [f.shape[1] for f in figures] for key, figures in per_stack.items()}
    joined = self.cut({key: jnp.concatenate(f, axis=1) for key, f in per_stack.items()},
                      opaque_offsets)
    keys = {i: m.key for m in self.members for i in m.indices}
    return [_split_columns(joined[i], widths[keys[i]]) for i in range(len(self.inputs))]


def plan(mats: Sequence[jax.Array], mesh: Optional[sharding.AnyMesh] = None, *,
         concatenate_distributed: bool = False) -> StackPlan:
  """Groups ``(batch, rows, cols)`` matrix batches into stacks, oriented wide.

  Args:
    mats: Matrix batches.
    mesh: The sharded path's mesh (`sharding.find_mesh`): matrices of one
      shape share a stack only if they are sharded alike (a stack needs one
      sharding to start from), and `StackPlan.apply` runs whole matrices per
      device.
    concatenate_distributed: Without a mesh, whether distributed matrices
      (`sharding.is_distributed`) of one shape still share a stack (Newton-
      Schulz: XLA partitions the stack's matmuls) or each gets a stack of its
      own (elementwise stages: same-shape leaves may be sharded differently,
      and a concatenation would gather some).

  Returns:
    A `StackPlan`.
  """
  mats = list(mats)
  if mesh is not None:
    splits = [sharding.oriented_spec(m) for m in mats]
  elif not concatenate_distributed and any(sharding.is_distributed(m) for m in mats):
    splits = list(range(len(mats)))
  else:
    splits = [None] * len(mats)
  groups: dict[GroupKey, list[int]] = {}
  for i, (m, split) in enumerate(zip(mats, splits)):
    groups.setdefault(group_key(m, split), []).append(i)
  members = [Members(key, indices, [_count(mats[i]) for i in indices])
             for key, indices in groups.items()]
  return StackPlan(members, mats, mesh)


def _count(m: jax.Array) -> int:
  """How many matrices a ``(..., rows, cols)`` batch holds along its leading axis."""
  return m.shape[0]


def _cut(x: jax.Array, start, size: int) -> jax.Array:
  if isinstance(start, int):
    return x[start:start + size]
  return jax.lax.dynamic_slice_in_dim(x, start, size)


def _split_columns(x: jax.Array, widths: Sequence[int]) -> tuple[jax.Array, ...]:
  return tuple(x[:, o:o + w] for o, w in zip(offsets(widths), widths))


def _opaque_offsets(starts: list[int], like: jax.Array) -> list[jax.Array]:
  """``starts`` as int32 scalars whose values XLA cannot see while compiling.

  XLA:CPU compiles each distinct kernel, and a slice at a constant offset is
  part of its consumer's kernel: unstacking 192 leaves made 192 kernels
  (~3 s of compile time on a 48-layer GPT). At offsets it cannot fold, the
  kernels of one shape are identical and compile once. The offsets pass
  through a ``while`` loop whose trip count (1, or 0 when ``like``'s first
  entry is NaN) depends on data; either way they come out unchanged.
  """
  first = like.reshape(-1)[0]
  runs = (first == first).astype(jnp.int32)
  init = (jnp.int32(0), tuple(jnp.int32(o) for o in starts))
  body = lambda c: (c[0] + 1, tuple(jnp.maximum(v, o) for v, o in zip(c[1], starts)))
  return list(jax.lax.while_loop(lambda c: c[0] < runs, body, init)[1])
