"""Per-matrix figures kept in optimizer states, at the params' places.

The gate, the burst guard and the paper's clip keep, per matrix leaf, a small
NamedTuple of figures (its shape group, a norm EMA, row and column
histories...). States hold them as one tree like the params per field (arrays
at matrix leaves, `optax.MaskedNode` elsewhere), as optax keeps ``mu`` and
``nu``: `optax.tree_map_params`, checkpoints and ``nnx.Optimizer`` then see
param-like trees.
"""

import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from root_optax._src import dimensions


def matrix_shape_array(rows: int, cols: int) -> jax.Array:
  """``(min, max)`` as an int32 array: a leaf's shape group, kept in per-leaf states."""
  return jnp.asarray([min(rows, cols), max(rows, cols)], jnp.int32)


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


def init_stats(cls, make: Callable[[int, int, int], NamedTuple], params: Any,
               weight_dimension_numbers: dimensions.WeightDimNumOrFn) -> Any:
  """The initial ``cls`` of param-like trees: ``make(batch, rows, cols)`` per matrix leaf."""
  def entry(leaf, dims):
    return make(*dimensions.matrix_shape(leaf.shape, dims))
  entries, treedef = dimensions.map_matrix_leaves(entry, params, weight_dimension_numbers)
  return trees_of_fields(cls, entries, treedef)


def matrix_entries(stats: NamedTuple, views: dimensions.MatrixLeaves) -> list:
  """The entries of `per_leaf_entries` at ``views``' matrix leaves, in their order."""
  entries = per_leaf_entries(stats, views.treedef)
  return [entries[i] for i in views.indices]


def stats_trees(cls, per_matrix: list, views: dimensions.MatrixLeaves) -> Any:
  """Inverse of `matrix_entries`: one entry per matrix leaf back to ``cls`` of trees."""
  return trees_of_fields(cls, views.per_leaf(per_matrix, optax.MaskedNode), views.treedef)
