"""Matrix stacks: the matrix leaves of a tree, batched into one array per shape.

ROOT's threshold and Newton-Schulz act on each matrix independently, so
matrices of one ``(min(rows, cols), max(rows, cols))`` shape and dtype are
turned wide (rows <= cols, the Gram matrix is then the small one) and
concatenated along a stack axis. The traced program then holds one copy of
each computation per distinct shape, not one per leaf; a 48-layer GPT has 4
shapes and 192 matrices.

`matrix_leaves` views a tree's matrix leaves as ``(batch, rows, cols)``
batches and puts results back; `stack` and `unstack` batch those by shape.
"""

import sys
from collections.abc import Callable, Hashable, Sequence
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from root_optax import dimensions
from root_optax import sharding


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


def orient_wide(m: jax.Array) -> jax.Array:
  """Makes each matrix wide (rows <= cols): the Gram matrix is then the small one."""
  return jnp.swapaxes(m, -1, -2) if m.shape[-2] > m.shape[-1] else m


def stack(mats: Sequence[jax.Array],
          splits: Optional[Sequence[Hashable]] = None) -> tuple[dict[GroupKey, jax.Array], list[Members]]:
  """Orients ``(batch, rows, cols)`` batches wide and concatenates those of one key.

  Args:
    mats: Matrix batches.
    splits: Per batch, the `GroupKey.split` tag (default: None for all).

  Returns:
    ``(stacks, plan)``: ``stacks`` maps each key, in first-seen order, to a
    ``(sum of batches, min, max)`` array; ``plan`` is what `unstack` needs.
  """
  splits = [None] * len(mats) if splits is None else list(splits)
  groups: dict[GroupKey, list[int]] = {}
  for i, (m, split) in enumerate(zip(mats, splits)):
    groups.setdefault(group_key(m, split), []).append(i)
  stacks, plan = {}, []
  for key, indices in groups.items():
    parts = [orient_wide(mats[i]) for i in indices]
    stacks[key] = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
    plan.append(Members(key, indices, [p.shape[0] for p in parts]))
  return stacks, plan


def offsets(sizes: Sequence[int]) -> list[int]:
  """Where each of consecutive parts of these sizes starts."""
  return [sum(sizes[:i]) for i in range(len(sizes))]


def _cut_points(plan: list[Members], like: Optional[jax.Array], opaque_offsets: bool) -> list:
  """``(key, input index, start, size)`` of every member, starts opaque if asked and useful."""
  cuts = [(key, i, start, size) for key, indices, sizes in plan
          for i, start, size in zip(indices, offsets(sizes), sizes)]
  if opaque_offsets and len(cuts) > 1 and like is not None and like.size > 0:
    starts = _opaque_offsets([start for _, _, start, _ in cuts], like)
    cuts = [(key, i, start, size) for (key, i, _, size), start in zip(cuts, starts)]
  return cuts


def _cut(x: jax.Array, start, size: int) -> jax.Array:
  if isinstance(start, int):
    return x[start:start + size]
  return jax.lax.dynamic_slice_in_dim(x, start, size)


def unstack(results: dict[GroupKey, jax.Array], plan: list[Members], mats: Sequence[jax.Array],
            opaque_offsets: bool = False) -> list[jax.Array]:
  """Inverse of `stack`: one array per input, in input order and shape.

  Args:
    results: Per key, a stack of results (the shape of the stack).
    plan: From `stack`.
    mats: The inputs of `stack`.
    opaque_offsets: Cut at offsets XLA cannot constant-fold (see
      `_opaque_offsets`), so that every cut of one shape compiles to one
      shared kernel. Only for unsharded stacks: a dynamic offset into a
      sharded axis would gather it.
  """
  out = [None] * len(mats)
  for key, i, start, size in _cut_points(plan, next(iter(results.values()), None), opaque_offsets):
    part = _cut(results[key], start, size)
    out[i] = part if part.shape == mats[i].shape else jnp.swapaxes(part, -1, -2)
  return out


def over_entries(v: jax.Array) -> jax.Array:
  """A per-matrix vector shaped to broadcast over each matrix of a stack."""
  return v[:, None, None]


def per_member(vectors: dict[GroupKey, jax.Array], plan: list[Members],
               opaque_offsets: bool = False) -> dict[int, jax.Array]:
  """Cuts per-stack vectors (one entry per stacked matrix, or rows of an array)
  into per-input pieces, at opaque offsets if asked (as `unstack`)."""
  cuts = _cut_points(plan, next(iter(vectors.values()), None), opaque_offsets)
  return {i: _cut(vectors[key], start, size) for key, i, start, size in cuts}


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


class MatrixLeaves(NamedTuple):
  """A tree's leaves, with ``(batch, fan_in, fan_out)`` views of its matrix leaves.

  Attributes:
    leaves: All leaves of the tree.
    treedef: Its structure.
    dims: Per leaf, its dimension numbers (None: not a matrix).
    indices: The positions of the matrix leaves in ``leaves``.
    matrices: Their matrix views (`dimensions.to_matrices`), in that order.
  """
  leaves: list
  treedef: Any
  dims: list
  indices: list[int]
  matrices: list[jax.Array]

  def rebuild(self, outs: Sequence[jax.Array]) -> Any:
    """The tree with each matrix leaf replaced by the matching view in ``outs``."""
    leaves = list(self.leaves)
    for i, out in zip(self.indices, outs):
      leaves[i] = dimensions.from_matrices(out, self.leaves[i].shape, self.dims[i])
    return jax.tree.unflatten(self.treedef, leaves)

  def per_leaf(self, values: Sequence[Any], fill: Callable[[], Any]) -> list:
    """One entry per leaf: ``values`` at the matrix leaves, ``fill()`` elsewhere."""
    out = [fill() for _ in self.leaves]
    for i, value in zip(self.indices, values):
      out[i] = value
    return out


def matrix_leaves(tree: Any, weight_dimension_numbers: dimensions.WeightDimNumOrFn) -> MatrixLeaves:
  """Splits ``tree`` into its leaves and the matrix views of its matrix leaves."""
  leaves, treedef = jax.tree.flatten(tree)
  dims = dimensions.resolve(weight_dimension_numbers, tree)
  indices = [i for i, d in enumerate(dims) if d is not None]
  matrices = [dimensions.to_matrices(leaves[i], dims[i]) for i in indices]
  return MatrixLeaves(leaves, treedef, dims, indices, matrices)


def map_matrices(fn: Callable[[list[jax.Array]], list[jax.Array]], tree: Any,
                 weight_dimension_numbers: dimensions.WeightDimNumOrFn) -> Any:
  """``fn`` over the matrix views of ``tree``'s matrix leaves; other leaves unchanged.

  Args:
    fn: From the list of ``(batch, fan_in, fan_out)`` views to a list of
      arrays of the same shapes.
    tree: A tree of arrays (updates).
    weight_dimension_numbers: Which leaves are matrices; see
      `root_optax.dimensions.resolve`.

  Returns:
    A tree like ``tree``.
  """
  views = matrix_leaves(tree, weight_dimension_numbers)
  return views.rebuild(fn(views.matrices))


# Per-matrix figures kept in optimizer states (outlier and burst statistics).


def matrix_shape_array(rows: int, cols: int) -> jax.Array:
  """``(min, max)`` as an int32 array: a leaf's shape group, kept in per-leaf states."""
  return jnp.asarray([min(rows, cols), max(rows, cols)], jnp.int32)


def frobenius_norms(m: jax.Array) -> jax.Array:
  """``||m||_F`` of each ``(b, rows, cols)`` matrix in float32, without overflow for huge entries."""
  a = jnp.abs(m.astype(jnp.float32))
  top = jnp.max(a, axis=(1, 2))
  safe = jnp.where(top > 0, top, 1.0)
  return top * jnp.sqrt(jnp.sum(jnp.square(a / safe[:, None, None]), axis=(1, 2)))


# Where flax keeps a parameter's metadata (e.g. its sharding) in the tree itself:
# (module, class) of nnx's Variable and linen's boxes (`nn.Partitioned`...).
_METADATA_BOXES = (("flax.nnx", "Variable"), ("flax.core.meta", "AxisMetadata"))


def _metadata_boxes() -> tuple[type, ...]:
  """The box classes of `_METADATA_BOXES` whose module is loaded (none without flax)."""
  modules = ((sys.modules.get(module), name) for module, name in _METADATA_BOXES)
  return tuple(getattr(m, name) for m, name in modules if m is not None and hasattr(m, name))


def unboxed(tree: Any) -> Any:
  """``tree`` with each metadata box (`_METADATA_BOXES`) replaced by its content.

  A per-matrix figure (shape ``()``, ``(batch,)``, ``(batch, rows)``...) kept
  at a parameter's place in a state must not carry the parameter's metadata:
  ``nnx.Optimizer`` would apply the parameter's sharding to it (a 2-D spec
  on a 0-D array fails), and ``nn.get_partition_spec`` would report it.
  """
  boxes = _metadata_boxes()
  if not boxes:
    return tree
  is_box = lambda x: isinstance(x, boxes)

  def content(box):
    # A box is a pytree node with one child, whatever its API.
    (child,), _ = jax.tree_util.tree_flatten(box, is_leaf=lambda x: x is not box)
    return child

  return jax.tree.map(lambda x: content(x) if is_box(x) else x, tree, is_leaf=is_box)


def figure_treedef(treedef) -> Any:
  """The structure per-matrix figures of a tree of structure ``treedef`` are kept in.

  ``treedef`` without metadata boxes (see `unboxed`): a plain tree like the
  params (dicts, modules) with the figures replicated, whatever the params'
  shardings. Both ``init`` and ``update`` key their figures by it, so the
  state's structure does not depend on whether the params came boxed.
  """
  slots = [object() for _ in range(treedef.num_leaves)]
  return jax.tree.structure(unboxed(jax.tree.unflatten(treedef, slots)))


def trees_of_fields(cls, entries: list, treedef) -> Any:
  """One ``cls`` of param-like trees from one ``cls`` (or `optax.MaskedNode`) per leaf.

  Per-field trees of arrays, not trees of NamedTuples: containers such as
  ``nnx.Optimizer`` wrap each param-like leaf and would rebuild a NamedTuple
  leaf as another type (a retrace per step). The trees have the structure of
  `figure_treedef`: no parameter metadata, so figures of any shape are
  replicated under a mesh.
  """
  masked = lambda e: isinstance(e, optax.MaskedNode)
  plain = figure_treedef(treedef)
  return cls(*(jax.tree.unflatten(plain, [e if masked(e) else e[k] for e in entries])
               for k in range(len(cls._fields))))


def per_leaf_entries(stats: NamedTuple, treedef) -> list:
  """Inverse of `trees_of_fields`: one ``type(stats)`` or `optax.MaskedNode` per leaf."""
  plain = figure_treedef(treedef)
  fields = [plain.flatten_up_to(tree) for tree in stats]
  return [f[0] if isinstance(f[0], optax.MaskedNode) else type(stats)(*f) for f in zip(*fields)]


def stack_matrices(mats: list[jax.Array]) -> tuple[dict, list]:
  """`stack` of ``(b, rows, cols)`` batches, each distributed one in a stack of its own.

  Distributed matrices (`sharding.is_distributed`) are not concatenated:
  same-shape leaves may be sharded differently, and a concatenation would
  gather some.
  """
  distributed = any(sharding.is_distributed(m) for m in mats)
  return stack(mats, range(len(mats)) if distributed else None)


def stack_vectors(parts: Sequence[jax.Array]) -> jax.Array:
  """Per-matrix state arrays (leading axis: the batch) of a stack's members, concatenated."""
  return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=0)
