"""Which leaf gets what: ROOT vs AdamW labels, and their alignment inside the ROOT branch.

`root()` sends matrix leaves through the ROOT chain and every other leaf through
AdamW with `optax.partition`; inside the ROOT branch, dimension numbers and the
weight-decay mask are aligned with the leaves the partition lets through.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax import dimensions
from root_optax import stacking

logger = logging.getLogger("root_optax")

ROOT = "root"
ADAM = "adam"
LABELS = (ROOT, ADAM)
LabelsOrFn = Union[Any, Callable[[Any], Any], None]


# Last keys of 2-D leaves that are not weight matrices: biases and norm scales
# stacked by `nnx.scan` / `nnx.vmap` (one row per layer).
VECTOR_KEYS = ("bias", "scale")
# `default_labels` sends paths containing this to AdamW, as the ROOT reference does.
EMBEDDING = "embed"


def leaf_paths(params: Any) -> list[str]:
  """The ``/``-joined key path of each leaf of ``params``.

  Paths are those of the unboxed tree (`stacking.unboxed`): an ``nnx.State``
  leaf's path is ``'layer/kernel'``, not ``'layer/kernel/value'``, at ``init``
  (Variables) and at ``update`` (arrays) alike.
  """
  return [path_text(path) for path, _ in
          jax.tree_util.tree_flatten_with_path(stacking.unboxed(params))[0]]


def structural_reason(path: str, shape: tuple[int, ...]) -> Optional[str]:
  """Why a leaf is not a weight matrix ROOT should orthogonalise, or None if it is one.

  Not 2-D (rank 1: vectors, rank > 2: stacked layers or conv kernels without
  dimension numbers); a 2-D leaf with a dimension of 1 (Newton-Schulz would
  only normalise it); a 2-D leaf named like a bias or norm scale (a stacked
  one, under `nnx.scan`).
  """
  if len(shape) > 2:
    return f"rank {len(shape)}: pass muon_weight_dimension_numbers to orthogonalise it"
  if len(shape) < 2:
    return f"rank {len(shape)}"
  if 1 in shape:
    return f"{shape[0]}x{shape[1]}: a vector"
  key = path.rsplit("/", 1)[-1]
  if key in VECTOR_KEYS:
    return f"2-D {key!r}: a stacked {key}"
  return None


class PathRouter:
  """`route_by_path`'s labels: a callable from params to a tree of labels.

  Attributes:
    adam: The path substrings that send a leaf to AdamW.
    warn_unmatched: Log a warning, once, for a pattern no path contains.
  """

  def __init__(self, adam: tuple[str, ...], warn_unmatched: bool = True):
    self.adam = adam
    self.warn_unmatched = warn_unmatched
    self._warned = False

  def reasons(self, params: Any) -> list[tuple[str, str]]:
    """``(label, why)`` of each leaf of ``params``."""
    out = []
    for path, leaf in zip(leaf_paths(params), jax.tree.leaves(params)):
      structural = structural_reason(path, tuple(np.shape(leaf)))
      matched = next((s for s in self.adam if s in path), None)
      if not is_real_float(leaf):
        out.append((ADAM, f"dtype {jnp.result_type(leaf).name}"))
      elif structural is not None:
        out.append((ADAM, structural))
      elif matched is not None:
        out.append((ADAM, f"path has {matched!r}"))
      else:
        out.append((ROOT, "2-D"))
    return out

  def _check_patterns(self, paths: list[str]) -> None:
    # A pattern nothing matches is a typo, unless a shorter matched pattern
    # covers it ('lm_head' when 'head' matched).
    matched = [s for s in self.adam if any(s in p for p in paths)]
    unmatched = [s for s in self.adam if s not in matched and not any(m in s for m in matched)]
    if unmatched and paths and not self._warned and jax.process_index() == 0:
      self._warned = True
      logger.warning("route_by_path: no parameter path contains %s; check the spelling "
                     "(paths look like %r)", ", ".join(map(repr, unmatched)), paths[0])

  def __call__(self, params: Any) -> Any:
    if self.warn_unmatched:
      self._check_patterns(leaf_paths(params))
    labels = [label for label, _ in self.reasons(params)]
    return jax.tree.unflatten(jax.tree.structure(params), labels)


def default_labels(params: Any) -> Any:
  """``'root'`` for weight matrices, ``'adam'`` for every other leaf.

  A weight matrix is a 2-D leaf with both dimensions > 1, not named ``bias``
  or ``scale`` (those are 2-D when stacked by ``nnx.scan``), and whose path
  does not contain ``'embed'`` (embeddings train with AdamW, as in the ROOT
  reference): `route_by_path` with ``('embed',)``. Stacked (rank-3) kernels
  and conv kernels need ``muon_weight_dimension_numbers`` to be matrices.
  """
  return PathRouter((EMBEDDING,), warn_unmatched=False)(params)


def labels_from_dimension_numbers(dims: Any, params: Any) -> Any:
  """``'root'`` where ``dims`` holds dimension numbers, ``'adam'`` where None."""
  per_leaf = dimensions.resolve(dims, params)
  leaves, treedef = jax.tree.flatten(params)
  del leaves
  return jax.tree.unflatten(treedef, [ADAM if d is None else ROOT for d in per_leaf])


def path_text(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


_ROUTE_BY_PATH_DEFAULT = ("embed", "lm_head", "head")


def route_by_path(adam: Sequence[str] = _ROUTE_BY_PATH_DEFAULT) -> PathRouter:
  """Labels weight matrices ``'root'`` unless their path contains one of ``adam``.

  The reference trains embeddings and the LM head with AdamW; pass this as
  ``root(param_labels=route_by_path())`` to do the same. Leaves that are not
  weight matrices go to AdamW as in `default_labels`: not 2-D, a dimension
  of 1, or a 2-D ``bias`` / ``scale``. A pattern (passed explicitly) that no
  path contains is logged as a warning once, naming it.

  Args:
    adam: Substrings of a leaf's ``/``-joined key path that send it to AdamW.

  Returns:
    A `PathRouter`: a callable from params to a tree of labels.
  """
  # A bare string would be split into characters and match almost every path.
  if isinstance(adam, str) or not all(isinstance(s, str) for s in tuple(adam)):
    raise TypeError(f"adam must be a sequence of strings such as ('embed', 'lm_head'), got {adam!r}")
  return PathRouter(tuple(adam), warn_unmatched=adam is not _ROUTE_BY_PATH_DEFAULT)


class _Labels:
  """The labels of one subtree's leaves: a plain object, so a leaf to `jax.tree`."""

  def __init__(self, items: list):
    self.items = items


def per_leaf_labels(labels: Any, params: Any) -> list:
  """One label per leaf of ``params``; a label at a subtree (a prefix) covers its leaves."""
  nested = jax.tree.map(lambda label, sub: _Labels([label] * len(jax.tree.leaves(sub))),
                        labels, params)
  return [label for entry in jax.tree.leaves(nested) for label in entry.items]


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

  logged = [False]

  def labels(params):
    tree = labels_of(params)
    if param_labels is not None:
      _check_real_root_leaves(params, tree)  # labels the user chose are kept or refused
      return tree
    tree, _ = real_float_labels(params, tree)
    moved = [(path, jnp.result_type(leaf).name) for path, leaf in
             zip(leaf_paths(params), jax.tree.leaves(params))
             if np.ndim(leaf) >= 2 and not is_real_float(leaf)]
    if moved and not logged[0] and jax.process_index() == 0:
      logged[0] = True
      logger.info("root(): %s to AdamW: ROOT takes real floating-point matrices only",
                  ", ".join(f"{path} ({dtype})" for path, dtype in moved))
    return tree
  return labels


def is_real_float(leaf: Any) -> bool:
  """Whether ``leaf`` (an array or `jax.ShapeDtypeStruct`) has a real floating dtype.

  ROOT's clip needs an order and Newton-Schulz a real Gram matrix; complex,
  integer and boolean leaves (and float0 gradients) are AdamW's, as their
  parameters would be in optax.
  """
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def real_float_labels(params: Any, labels: Any) -> tuple[Any, list[tuple[str, str]]]:
  """``labels`` (one per leaf of ``params``) with every non-real-float ``'root'`` leaf ``'adam'``.

  Returns:
    The labels, and ``(path, dtype)`` of each leaf moved to AdamW.
  """
  leaves, treedef = jax.tree.flatten(params)
  flat = treedef.flatten_up_to(labels)
  moved = [(path, jnp.result_type(leaf).name)
           for path, leaf, label in zip(leaf_paths(params), leaves, flat)
           if label == ROOT and not is_real_float(leaf)]
  if not moved:
    return labels, moved
  flat = [ADAM if label == ROOT and not is_real_float(leaf) else label
          for leaf, label in zip(leaves, flat)]
  return jax.tree.unflatten(treedef, flat), moved


def _check_real_root_leaves(params: Any, labels: Any) -> None:
  """Refuses a leaf the user labelled ``'root'`` that is not a real floating-point array."""
  labelled, treedef = jax.tree_util.tree_flatten_with_path(labels)
  for (path, label), sub in zip(labelled, treedef.flatten_up_to(params)):
    other = [p for p in jax.tree.leaves(sub) if not is_real_float(p)]
    if label == ROOT and other:
      raise TypeError(
          f"parameter {jax.tree_util.keystr(path)} has dtype {jnp.result_type(other[0]).name}; ROOT "
          f"leaves must be real floating-point (the outlier clip needs an order, Newton-Schulz a "
          f"real Gram matrix). Label it {ADAM!r} with param_labels; without param_labels such "
          f"leaves go to AdamW.")


def branch_dimension_numbers(weight_dimension_numbers: dimensions.WeightDimNumOrFn
                             ) -> Callable[[Any], Any]:
  """Dimension numbers for the leaves `optax.partition` sends to the ROOT branch.

  Inside the branch, AdamW leaves are `optax.MaskedNode` (subtrees without
  leaves, so a user's entry there, full tree or prefix, covers nothing), and
  a ROOT leaf without dimension numbers must be 2-D. A callable is called once.
  """
  def dims_for(updates):
    leaves, treedef = jax.tree.flatten(updates)
    per_leaf = dimensions.resolve(weight_dimension_numbers, updates)
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
