"""Which leaf gets what: ROOT vs AdamW labels, and their alignment inside the ROOT branch.

`root()` sends matrix leaves through the ROOT chain and every other leaf through
AdamW with `optax.partition`; inside the ROOT branch, dimension numbers and the
weight-decay mask are aligned with the leaves the partition lets through.
"""

from collections.abc import Callable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp
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


def path_text(path) -> str:
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
    if p.ndim != 2 or any(s in path_text(path) for s in adam):
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


def labels_fn(param_labels: LabelsOrFn, weight_dimension_numbers: dimensions.WeightDimNumOrFn
              ) -> Callable[[Any], Any]:
  """The labels `root()` partitions by: ``param_labels``, else from the dimension numbers, else by rank.

  The returned callable also rejects complex leaves labelled ``'root'``.
  """
  if param_labels is not None:
    labels_of = lambda params: resolve_labels(param_labels, params)
  elif weight_dimension_numbers is not None:
    labels_of = lambda params: labels_from_dimension_numbers(weight_dimension_numbers, params)
  else:
    labels_of = default_labels

  def labels(params):
    tree = labels_of(params)
    _check_real_root_leaves(params, tree)
    return tree
  return labels


def _check_real_root_leaves(params: Any, labels: Any) -> None:
  """ROOT's clip and Newton-Schulz are defined for real matrices only."""
  labelled, treedef = jax.tree_util.tree_flatten_with_path(labels)
  for (path, label), sub in zip(labelled, treedef.flatten_up_to(params)):
    complex_leaves = [p for p in jax.tree.leaves(sub) if jnp.iscomplexobj(p)]
    if label == ROOT and complex_leaves:
      raise TypeError(
          f"parameter {jax.tree_util.keystr(path)} has complex dtype {complex_leaves[0].dtype}; ROOT "
          f"leaves must be real (the outlier clip needs an order, Newton-Schulz a "
          f"real Gram matrix). Label it {ADAM!r} with param_labels.")


def branch_dimension_numbers(weight_dimension_numbers: dimensions.WeightDimNumOrFn
                             ) -> Callable[[Any], Any]:
  """Dimension numbers for the leaves `optax.partition` sends to the ROOT branch.

  Inside the branch, AdamW leaves are `optax.MaskedNode`; a user's tree of
  dimension numbers is aligned with that, and a ROOT leaf without dimension
  numbers must be 2-D.
  """
  def dims_for(updates):
    spec = weight_dimension_numbers
    if callable(spec) and not dimensions.is_dimension_numbers(spec):
      spec = spec(updates)
    if spec is not None and not dimensions.is_dimension_numbers(spec):
      spec = mask_like(spec, updates)
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = dimensions.resolve(spec, updates)
    for leaf, dims in zip(leaves, per_leaf):
      if dims is None:
        raise ValueError(
            f"a leaf of shape {leaf.shape} is labelled {ROOT!r} but is not 2-D; give it "
            f"muon_weight_dimension_numbers or label it {ADAM!r}")
    return jax.tree.unflatten(treedef, per_leaf)
  return dims_for


def branch_mask(mask: Any) -> Any:
  """A weight-decay mask (tree, callable or None) usable inside an `optax.partition` branch."""
  if mask is None or callable(mask):
    return mask
  return lambda params: mask_like(mask, params)
