"""Views of parameters as batches of matrices, via dimension numbers.

Orthogonalisation and quantile thresholding act on matrices. A 2-D leaf is one
matrix ``(fan_in, fan_out)``; a higher-rank leaf (a scanned stack of layers, a
convolution kernel) is viewed as a batch of matrices through
`optax.contrib.MuonDimensionNumbers`, exactly as optax's Muon does: the
reduction axes are flattened into rows, the output axes into columns, and all
other axes are batch axes.
"""

import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any, NamedTuple, Optional, Union

import jax
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

DimensionNumbers = MuonDimensionNumbers
MATRIX = MuonDimensionNumbers(reduction_axis=0, output_axis=1)
WeightDimNumOrFn = Union[MuonDimensionNumbers, Any, Callable[[Any], Any], None]


def is_dimension_numbers(x: Any) -> bool:
  return isinstance(x, MuonDimensionNumbers)


def _is_dims_leaf(x: Any) -> bool:
  return x is None or is_dimension_numbers(x) or isinstance(x, optax.MaskedNode)


def _axes(spec, ndim: int) -> tuple[int, ...]:
  spec = (spec,) if isinstance(spec, int) else tuple(spec)
  return tuple(ax % ndim for ax in spec)


def normalized_axes(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> tuple[
    tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
  """Returns (batch_axes, reduction_axes, output_axes) as non-negative ints."""
  ndim = len(shape)
  if ndim < 2:
    raise ValueError(f"a matrix view needs rank >= 2, got shape {shape}")
  reduction = _axes(dims.reduction_axis, ndim)
  output = _axes(dims.output_axis, ndim)
  if not reduction or not output or set(reduction) & set(output):
    raise ValueError(
        f"dimension numbers need disjoint, non-empty reduction and output axes, "
        f"got {dims} for shape {shape}")
  batch = tuple(ax for ax in range(ndim) if ax not in reduction + output)
  return batch, reduction, output


def matrix_shape(shape: tuple[int, ...], dims: MuonDimensionNumbers) -> tuple[int, int, int]:
  """Returns ``(batch, fan_in, fan_out)`` of the matrix view of ``shape``."""
  batch, reduction, output = normalized_axes(shape, dims)
  size = lambda axes: math.prod(shape[ax] for ax in axes)
  return size(batch), size(reduction), size(output)


def to_matrices(x: jax.Array, dims: MuonDimensionNumbers) -> jax.Array:
  """Reshapes ``x`` to ``(batch, fan_in, fan_out)``."""
  batch, reduction, output = normalized_axes(x.shape, dims)
  return x.transpose(batch + reduction + output).reshape(matrix_shape(x.shape, dims))


def from_matrices(y: jax.Array, shape: tuple[int, ...], dims: MuonDimensionNumbers) -> jax.Array:
  """Inverse of `to_matrices` for a leaf of the given original ``shape``."""
  batch, reduction, output = normalized_axes(shape, dims)
  perm = batch + reduction + output
  y = y.reshape(tuple(shape[ax] for ax in perm))
  inverse = tuple(sorted(range(len(shape)), key=lambda i: perm[i]))
  return y.transpose(inverse)


def is_spec_function(spec: Any) -> bool:
  """Whether ``spec`` is a callable returning dimension numbers, not dimension numbers.

  A tree of dimension numbers may itself be callable (every equinox Module
  is): a callable whose pytree leaves are all dimension numbers or None is a
  tree, and is never called.
  """
  if not callable(spec) or is_dimension_numbers(spec):
    return False
  return any(not _is_dims_leaf(leaf) for leaf in jax.tree.leaves(spec, is_leaf=_is_dims_leaf))


def spec_for(weight_dimension_numbers: WeightDimNumOrFn, tree: Any) -> Any:
  """The dimension numbers for ``tree``: the callable's result, called once, or the spec itself."""
  spec = weight_dimension_numbers
  return spec(tree) if is_spec_function(spec) else spec


class _Entries:
  """The per-leaf entries of one subtree: a plain object, so a leaf to `jax.tree`."""

  def __init__(self, items: list):
    self.items = items


def _broadcast_prefix(spec: Any, tree: Any) -> list:
  """One entry of ``spec`` per leaf of ``tree``; an entry at a subtree covers its leaves.

  As optax's Muon: ``{'w1': None, 'w2': MuonDimensionNumbers()}`` sends every
  leaf under ``w1`` to AdamW and views every leaf of rank >= 2 under ``w2``.
  """
  def per_subtree(dims, sub):
    leaves = jax.tree.leaves(sub)
    if jax.tree_util.treedef_is_leaf(jax.tree.structure(sub)) and leaves:
      return _Entries([dims])  # the entry of this very leaf
    return _Entries([dims if dims is not None and np.ndim(leaf) >= 2 else None for leaf in leaves])

  try:
    nested = jax.tree.map(per_subtree, spec, tree, is_leaf=_is_dims_leaf)
  except ValueError as e:
    raise ValueError(
        "weight_dimension_numbers must have the structure of the params, or of a "
        f"prefix of it (None or MuonDimensionNumbers at a subtree): {e}") from e
  return [d for entries in jax.tree.leaves(nested) for d in entries.items]


def resolve(weight_dimension_numbers: WeightDimNumOrFn, updates: Any) -> Any:
  """Returns, per leaf of ``updates``, its `MuonDimensionNumbers` or None.

  Args:
    weight_dimension_numbers: None (every 2-D leaf is a ``(fan_in, fan_out)``
      matrix, other leaves are left alone), one `MuonDimensionNumbers` for every
      leaf of rank >= 2, a tree of them like ``updates`` or a prefix of it
      (None marks leaves to leave alone; an entry at a subtree applies to its
      leaves of rank >= 2), or a callable returning such a tree from the
      updates (called once: the tree it returns may itself be callable, as an
      equinox Module is).
    updates: The tree the transform is applied to.

  Returns:
    A list, one entry per leaf of ``updates``: its dimension numbers or None.
  """
  spec = spec_for(weight_dimension_numbers, updates)
  leaves = jax.tree.leaves(updates)
  if spec is None:
    return [MATRIX if np.ndim(leaf) == 2 else None for leaf in leaves]
  if is_dimension_numbers(spec):
    return [spec if np.ndim(leaf) >= 2 else None for leaf in leaves]
  per_leaf = _broadcast_prefix(spec, updates)
  for dims, leaf in zip(per_leaf, leaves):
    if not (dims is None or is_dimension_numbers(dims)):
      raise TypeError(
          "weight_dimension_numbers leaves must be MuonDimensionNumbers or None, "
          f"got {type(dims).__name__}")
    if dims is not None and np.ndim(leaf) < 2:
      raise ValueError(
          f"dimension numbers {dims} given for a leaf of rank {np.ndim(leaf)}; "
          "only leaves of rank >= 2 can be viewed as matrices")
  return per_leaf


def validate_spec(weight_dimension_numbers: WeightDimNumOrFn,
                  name: str = "weight_dimension_numbers") -> None:
  """Build-time type check of a ``weight_dimension_numbers`` argument called ``name``."""
  spec = weight_dimension_numbers
  if spec is None or is_dimension_numbers(spec) or is_spec_function(spec):
    return
  for leaf in jax.tree.leaves(spec, is_leaf=_is_dims_leaf):
    if not _is_dims_leaf(leaf):
      raise TypeError(
          f"{name} must be None, a MuonDimensionNumbers, a "
          "tree of them (None for non-matrix leaves) or a callable; found a "
          f"leaf of type {type(leaf).__name__}")


def fan_in_out(shape: tuple[int, ...], dims: Optional[MuonDimensionNumbers]) -> tuple[int, int]:
  """``(fan_in, fan_out)`` of a leaf's matrix view."""
  _, fan_in, fan_out = matrix_shape(shape, dims or MATRIX)
  return fan_in, fan_out


def map_matrix_leaves(fn: Callable[[jax.Array, MuonDimensionNumbers], Any], params: Any,
                      weight_dimension_numbers: WeightDimNumOrFn) -> tuple[list, Any]:
  """``fn(leaf, dims)`` for each matrix leaf, `optax.MaskedNode` for the others, and the treedef.

  Per-leaf optimizer states built from these have the params' structure, so
  `optax.tree_map_params` and checkpoint tools see them as param trees.
  """
  leaves, treedef = jax.tree.flatten(params)
  dims = resolve(weight_dimension_numbers, params)
  return [optax.MaskedNode() if d is None else fn(leaf, d) for leaf, d in zip(leaves, dims)], treedef


class MatrixLeaves(NamedTuple):
  """A tree's leaves, with ``(batch, fan_in, fan_out)`` views of its matrix leaves.

  Attributes:
    leaves: All leaves of the tree.
    treedef: Its structure.
    dims: Per leaf, its dimension numbers (None: not a matrix).
    indices: The positions of the matrix leaves in ``leaves``.
    matrices: Their matrix views (`to_matrices`), in that order.
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
      leaves[i] = from_matrices(out, self.leaves[i].shape, self.dims[i])
    return jax.tree.unflatten(self.treedef, leaves)

  def per_leaf(self, values: Sequence[Any], fill: Callable[[], Any]) -> list:
    """One entry per leaf: ``values`` at the matrix leaves, ``fill()`` elsewhere."""
    out = [fill() for _ in self.leaves]
    for i, value in zip(self.indices, values):
      out[i] = value
    return out


def matrix_leaves(tree: Any, weight_dimension_numbers: WeightDimNumOrFn) -> MatrixLeaves:
  """Splits ``tree`` into its leaves and the matrix views of its matrix leaves."""
  leaves, treedef = jax.tree.flatten(tree)
  dims = resolve(weight_dimension_numbers, tree)
  indices = [i for i, d in enumerate(dims) if d is not None]
  matrices = [to_matrices(leaves[i], dims[i]) for i in indices]
  return MatrixLeaves(leaves, treedef, dims, indices, matrices)


def map_matrices(fn: Callable[[list[jax.Array]], list[jax.Array]], tree: Any,
                 weight_dimension_numbers: WeightDimNumOrFn) -> Any:
  """``fn`` over the matrix views of ``tree``'s matrix leaves; other leaves unchanged.

  Args:
    fn: From the list of ``(batch, fan_in, fan_out)`` views to a list of
      arrays of the same shapes.
    tree: A tree of arrays (updates).
    weight_dimension_numbers: Which leaves are matrices; see `resolve`.

  Returns:
    A tree like ``tree``.
  """
  views = matrix_leaves(tree, weight_dimension_numbers)
  return views.rebuild(fn(views.matrices))
