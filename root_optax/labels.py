"""Which leaf gets what: ROOT vs AdamW labels, and shape groups for batching.

`root()` sends matrix leaves through the ROOT chain and every other leaf through
AdamW with `optax.partition`. Inside the ROOT chain, matrices of one
``(min, max)`` shape and dtype are stacked and orthogonalised together, so the
traced program holds one Newton-Schulz loop per distinct shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import optax

from root_optax import dimensions

ROOT = "root"
ADAM = "adam"
LABELS = (ROOT, ADAM)
LabelsOrFn = Union[Any, Callable[[Any], Any], None]


def default_labels(params: Any) -> Any:
  """``'root'`` for 2-D leaves, ``'adam'`` for all others (the reference's rule)."""
  return jax.tree.map(lambda p: ROOT if p.ndim == 2 else ADAM, params)


def labels_from_dimension_numbers(dims: Any, params: Any) -> Any:
  """``'root'`` where ``dims`` holds dimension numbers, ``'adam'`` where None."""
  per_leaf = dimensions.resolve(dims, params)
  leaves, treedef = jax.tree.flatten(params)
  del leaves
  return jax.tree.unflatten(treedef, [ADAM if d is None else ROOT for d in per_leaf])


def _path_text(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def route_by_path(adam: Sequence[str] = ("embed", "lm_head", "head")) -> Callable[[Any], Any]:
  """Labels matrices ``'root'`` unless their path contains one of ``adam``.

  The reference trains embeddings and the LM head with AdamW; pass this as
  ``root(param_labels=route_by_path())`` to do the same. Non-2-D leaves are
  ``'adam'``.

  Args:
    adam: Substrings of a leaf's ``/``-joined key path that send it to AdamW.

  Returns:
    A callable from params to a tree of labels.
  """
  # A bare string would be split into characters and match almost every path.
  if isinstance(adam, str) or not all(isinstance(s, str) for s in tuple(adam)):
    raise TypeError(f"adam must be a sequence of strings such as ('embed', 'lm_head'), got {adam!r}")
  adam = tuple(adam)

  def label(path, p):
    if p.ndim != 2 or any(s in _path_text(path) for s in adam):
      return ADAM
    return ROOT

  return lambda params: jax.tree_util.tree_map_with_path(label, params)


def resolve_labels(param_labels: LabelsOrFn, params: Any) -> Any:
  """Returns the label tree (calling ``param_labels`` if it is a callable)."""
  labels = param_labels(params) if callable(param_labels) else param_labels
  for label in jax.tree.leaves(labels):
    if label not in LABELS:
      raise ValueError(f"param_labels leaves must be one of {LABELS}, got {label!r}")
  return labels


def mask_like(mask: Any, updates: Any) -> Any:
  """Aligns a full-tree boolean mask with a tree masked by `optax.partition`.

  Inside `optax.partition`, leaves of the other branch are `optax.MaskedNode`;
  a user's mask has a bool there. This puts MaskedNode back in those places.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree.map(
      lambda u, m: u if is_masked(u) else m, updates, mask, is_leaf=is_masked)


def shape_groups(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any]) -> dict[tuple, list[int]]:
  """Groups matrix batches by ``(min(rows, cols), max(rows, cols), dtype)``.

  Args:
    shapes: ``(batch, rows, cols)`` of each matrix batch.
    dtypes: Their dtypes.

  Returns:
    ``{(min, max, dtype_name): [indices]}`` in first-seen order.
  """
  groups: dict[tuple, list[int]] = {}
  for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
    rows, cols = shape[-2:]
    key = (min(rows, cols), max(rows, cols), jax.numpy.dtype(dtype).name)
    groups.setdefault(key, []).append(i)
  return groups
