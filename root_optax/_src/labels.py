"""Which leaf gets what: ROOT vs AdamW labels, and why.

`root()` sends matrix leaves through the ROOT chain and every other leaf through
AdamW with `optax.partition`. `decide` is that decision, leaf by leaf, with its
reason: `labels_fn` partitions by it and `routing` reports it.
"""

import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from root_optax._src import dimensions
from root_optax._src import leaf_state
from root_optax._src import validation

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

  Paths are those of the unboxed tree (`leaf_state.unboxed`): an ``nnx.State``
  leaf's path is ``'layer/kernel'``, not ``'layer/kernel/value'``, at ``init``
  (Variables) and at ``update`` (arrays) alike.
  """
  return [path_text(path) for path, _ in
          jax.tree_util.tree_flatten_with_path(leaf_state.unboxed(params))[0]]


def path_text(path) -> str:
  """A `jax.tree_util` key path as ``/``-joined keys: ``'layer/kernel'``."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


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


def is_real_float(leaf: Any) -> bool:
  """Whether ``leaf`` (an array or `jax.ShapeDtypeStruct`) has a real floating dtype.

  ROOT's clip needs an order and Newton-Schulz a real Gram matrix; complex,
  integer and boolean leaves (and float0 gradients) are AdamW's, as their
  parameters would be in optax.
  """
  return jnp.issubdtype(jnp.result_type(leaf), jnp.floating)


def dtype_name(leaf: Any) -> str:
  """The name of ``leaf``'s dtype: ``'float32'``, ``'int32'``, ..."""
  return jnp.result_type(leaf).name


def path_reasons(params: Any, adam: Sequence[str]) -> list[tuple[str, str]]:
  """``(label, reason)`` of each leaf by dtype, then shape, then path.

  Args:
    params: The parameters (arrays or `jax.ShapeDtypeStruct`s).
    adam: Path substrings that send a weight matrix to AdamW.

  Returns:
    One ``(label, reason)`` per leaf: ``'adam'`` for a leaf that is not real
    floating-point, not a weight matrix (`structural_reason`) or whose path
    contains one of ``adam``; else ``('root', '2-D')``.
  """
  out = []
  for path, leaf in zip(leaf_paths(params), jax.tree.leaves(params)):
    structural = structural_reason(path, tuple(np.shape(leaf)))
    matched = next((s for s in adam if s in path), None)
    if not is_real_float(leaf):
      out.append((ADAM, f"dtype {dtype_name(leaf)}"))
    elif structural is not None:
      out.append((ADAM, structural))
    elif matched is not None:
      out.append((ADAM, f"path has {matched!r}"))
    else:
      out.append((ROOT, "2-D"))
  return out


def label_tree(params: Any, decided: list[tuple[str, str]]) -> Any:
  """The labels of ``decided`` (one ``(label, reason)`` per leaf) in a tree like ``params``."""
  return jax.tree.unflatten(jax.tree.structure(params), [label for label, _ in decided])


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
    """``(label, reason)`` of each leaf of ``params`` (`path_reasons`)."""
    return path_reasons(params, self.adam)

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
    return label_tree(params, self.reasons(params))


def default_labels(params: Any) -> Any:
  """``'root'`` for weight matrices, ``'adam'`` for every other leaf.

  A weight matrix is a 2-D leaf with both dimensions > 1, not named ``bias``
  or ``scale`` (those are 2-D when stacked by ``nnx.scan``), and whose path
  does not contain ``'embed'`` (embeddings train with AdamW, as in the ROOT
  reference): `route_by_path` with ``('embed',)``. Stacked (rank-3) kernels
  and conv kernels need ``muon_weight_dimension_numbers`` to be matrices.
  """
  return label_tree(params, path_reasons(params, (EMBEDDING,)))


_ROUTE_BY_PATH_DEFAULT = ("embed", "lm_head", "head")


def route_by_path(adam: Sequence[str] = _ROUTE_BY_PATH_DEFAULT, *,
                  warn_unmatched: bool = True) -> PathRouter:
  """Labels weight matrices ``'root'`` unless their path contains one of ``adam``.

  The reference trains embeddings and the LM head with AdamW; pass this as
  ``root(param_labels=route_by_path())`` to do the same. Leaves that are not
  weight matrices go to AdamW as in `default_labels`: not 2-D, a dimension
  of 1, or a 2-D ``bias`` / ``scale``.

  Args:
    adam: Substrings of a leaf's ``/``-joined key path that send it to AdamW.
    warn_unmatched: Log a warning, once, naming each pattern of ``adam`` that
      no path contains (likely a typo). Never for the default patterns, which
      are alternatives; pass False for a router also called on subtrees
      that hold none of the patterns.

  Returns:
    A callable from params to a tree of labels.
  """
  # A bare string would be split into characters and match almost every path.
  if isinstance(adam, str) or not all(isinstance(s, str) for s in tuple(adam)):
    raise TypeError(f"adam must be a sequence of strings such as ('embed', 'lm_head'), got {adam!r}")
  validation.boolean("warn_unmatched", warn_unmatched)
  warn = warn_unmatched and adam is not _ROUTE_BY_PATH_DEFAULT
  return PathRouter(tuple(adam), warn_unmatched=warn)


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


def _user_reasons(params: Any, param_labels: LabelsOrFn) -> list[tuple[str, str]]:
  """The user's labels, each with `default_labels`' label and reason where they differ."""
  labels = per_leaf_labels(resolve_labels(param_labels, params), params)
  defaults = path_reasons(params, (EMBEDDING,))
  return [(label, "param_labels" if label == default else f"param_labels (default: {default}, {why})")
          for label, (default, why) in zip(labels, defaults)]


def _dimension_reasons(params: Any, dims: list) -> list[tuple[str, str]]:
  """``'root'`` where ``dims`` holds dimension numbers and the leaf is real floating-point."""
  return [(ADAM, f"dtype {dtype_name(leaf)}: AdamW") if d is not None and not is_real_float(leaf)
          else (ADAM if d is None else ROOT, "muon_weight_dimension_numbers")
          for d, leaf in zip(dims, jax.tree.leaves(params))]


def decide(params: Any, param_labels: LabelsOrFn = None,
           dims: Optional[list] = None) -> list[tuple[str, str]]:
  """Where `root()` sends each leaf of ``params``, and why.

  Args:
    params: The parameters (arrays or `jax.ShapeDtypeStruct`s).
    param_labels: `root`'s ``param_labels``: its labels are kept (a
      `route_by_path` router gives its own reasons).
    dims: Per leaf, the dimension numbers of `root`'s
      ``muon_weight_dimension_numbers`` (`dimensions.resolve`), or None
      when that argument is None. Without ``param_labels``, a leaf with
      dimension numbers goes to ROOT if it is real floating-point.

  Returns:
    One ``(label, reason)`` per leaf, in the order of ``jax.tree.leaves``;
    with neither argument, `default_labels`' rule (`path_reasons`).
  """
  if isinstance(param_labels, PathRouter):
    return param_labels.reasons(params)
  if param_labels is not None:
    return _user_reasons(params, param_labels)
  if dims is not None:
    return _dimension_reasons(params, dims)
  return path_reasons(params, (EMBEDDING,))


def non_float_matrices(params: Any) -> list[tuple[str, str]]:
  """``(path, dtype)`` of each leaf of rank >= 2 that is not real floating-point."""
  return [(path, dtype_name(leaf)) for path, leaf in zip(leaf_paths(params), jax.tree.leaves(params))
          if np.ndim(leaf) >= 2 and not is_real_float(leaf)]


def labels_fn(param_labels: LabelsOrFn, weight_dimension_numbers: dimensions.WeightDimNumOrFn
              ) -> Callable[[Any], Any]:
  """The labels `root()` partitions by: ``param_labels``, else `decide`'s.

  Args:
    param_labels: `root`'s ``param_labels``: returned as given (a prefix
      stays a prefix), a complex or integer leaf labelled ``'root'`` refused.
    weight_dimension_numbers: `root`'s ``muon_weight_dimension_numbers``.

  Returns:
    A callable from params to their label tree. Without ``param_labels``, it
    logs once at INFO the matrices that are not real floating-point (AdamW's).
  """
  if param_labels is not None:
    return lambda params: _checked_user_labels(param_labels, params)
  logged = False

  def labels(params):
    nonlocal logged
    dims = (None if weight_dimension_numbers is None
            else dimensions.resolve(weight_dimension_numbers, params))
    tree = label_tree(params, decide(params, None, dims))
    moved = non_float_matrices(params)
    if moved and not logged and jax.process_index() == 0:
      logged = True
      logger.info("root(): %s to AdamW: ROOT takes real floating-point matrices only",
                  ", ".join(f"{path} ({dtype})" for path, dtype in moved))
    return tree
  return labels


def _checked_user_labels(param_labels: LabelsOrFn, params: Any) -> Any:
  """The user's label tree; a leaf labelled ``'root'`` that is not real floating-point is refused."""
  labels = resolve_labels(param_labels, params)
  labelled, treedef = jax.tree_util.tree_flatten_with_path(labels)
  for (path, label), sub in zip(labelled, treedef.flatten_up_to(params)):
    other = [p for p in jax.tree.leaves(sub) if not is_real_float(p)]
    if label == ROOT and other:
      raise TypeError(
          f"parameter {jax.tree_util.keystr(path)} has dtype {dtype_name(other[0])}; ROOT "
          f"leaves must be real floating-point (the outlier clip needs an order, Newton-Schulz a "
          f"real Gram matrix). Label it {ADAM!r} with param_labels; without param_labels such "
          f"leaves go to AdamW.")
  return labels
