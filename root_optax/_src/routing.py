"""Which parameter `root()` sends where, and why: `describe` and `routes`.

`root()` labels every leaf ``'root'`` (the ROOT chain: Newton-Schulz on its
matrix view) or ``'adam'`` (AdamW). `routes` returns that decision per leaf
with its reason and, for ROOT leaves, the matrix view and the ``(min, max)``
shape group whose matrices are orthogonalised together; `describe` formats it
as a table. `root()` logs the same summary once, at ``init``.
"""

import logging
from typing import Any, NamedTuple, Optional

import jax
import numpy as np
import optax

from root_optax._src import dimensions
from root_optax._src import labels as labels_lib

logger = logging.getLogger("root_optax")


class Route(NamedTuple):
  """Where one parameter leaf goes.

  Attributes:
    path: The leaf's ``/``-joined key path.
    shape: Its shape.
    label: ``'root'`` or ``'adam'``.
    reason: Why: ``'2-D'``, ``'rank 1'``, ``"path has 'embed'"``, ...
    matrices: For ROOT leaves, how many matrices its view holds (the product
      of its batch axes); 0 for AdamW leaves.
    group: For ROOT leaves, the ``(min, max)`` shape of its matrices; None
      for AdamW leaves.
    dtype: The leaf's dtype name.
  """
  path: str
  shape: tuple[int, ...]
  label: str
  reason: str
  matrices: int = 0
  group: Optional[tuple[int, int]] = None
  dtype: str = ""


def routes(params: Any, param_labels: labels_lib.LabelsOrFn = None,
           muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn = None) -> tuple[Route, ...]:
  """Per leaf of ``params``, where `root()` with these arguments sends it.

  Args:
    params: The parameters (arrays or `jax.ShapeDtypeStruct`s: only shapes
      and dtypes are read; ``nnx.State`` and other boxed trees are unboxed).
    param_labels: As `root`'s ``param_labels``.
    muon_weight_dimension_numbers: As `root`'s.

  Returns:
    A tuple of `Route`, in the order of ``jax.tree.leaves(params)``.

  Raises:
    ValueError, TypeError: For labels other than ``'root'`` / ``'adam'`` or
      dimension numbers of the wrong kind, as `root` would at ``init``.
  """
  dimensions.validate_spec(muon_weight_dimension_numbers, "muon_weight_dimension_numbers")
  paths, leaves = labels_lib.leaf_paths(params), jax.tree.leaves(params)
  dims = dimensions.resolve(muon_weight_dimension_numbers, params)
  decided = labels_lib.decide(params, param_labels,
                              None if muon_weight_dimension_numbers is None else dims)
  return tuple(map(_route, paths, leaves, decided, dims))


def _route(path: str, leaf: Any, decided: tuple[str, str], dim: Any) -> Route:
  """The `Route` of one leaf; for a ROOT leaf, with its matrix view's count and shape group."""
  (label, reason), shape, dtype = decided, tuple(np.shape(leaf)), labels_lib.dtype_name(leaf)
  if label != labels_lib.ROOT or len(shape) < 2:
    return Route(path, shape, label, reason, dtype=dtype)
  batch, fan_in, fan_out = dimensions.matrix_shape(shape, dim or dimensions.MATRIX)
  return Route(path, shape, label, reason, batch, (min(fan_in, fan_out), max(fan_in, fan_out)), dtype)


def _count(n: int, noun: str, plural: str) -> str:
  return f"{n} {noun if n == 1 else plural}"


def summary(found: tuple[Route, ...]) -> str:
  """One line: how many leaves go where, the ROOT shape groups, and what to check."""
  groups: dict = {}
  for r in found:
    if r.group is not None:
      groups[r.group] = groups.get(r.group, 0) + r.matrices
  n_root = sum(r.label == labels_lib.ROOT for r in found)
  line = f"{_count(n_root, 'leaf', 'leaves')} to ROOT"
  if groups:
    text = ", ".join(f"{n} x {a}x{b}" for (a, b), n in sorted(groups.items()))
    line += f" ({_count(len(groups), 'shape group', 'shape groups')}: {text})"
  line += f", {len(found) - n_root} to AdamW"
  high_rank = [r.path for r in found if r.label == labels_lib.ADAM and len(r.shape) > 2]
  if high_rank:
    line += f"; rank > 2 on AdamW: {', '.join(high_rank)}"
  # On ROOT yet no weight matrix: a matrix view with a dimension of 1, a 2-D bias or scale.
  vector_like = [r.path for r in found if r.label == labels_lib.ROOT and (
      (r.group is not None and r.group[0] == 1)
      or (len(r.shape) == 2 and labels_lib.structural_reason(r.path, r.shape) is not None))]
  if vector_like:
    line += f"; not weight matrices on ROOT: {', '.join(vector_like)}"
  return line


def describe(params: Any, param_labels: labels_lib.LabelsOrFn = None,
             muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn = None) -> str:
  """A table of where `root()` sends each leaf of ``params``, and why.

  The summary line flags what may not be what you meant: leaves of rank > 2
  on AdamW (stacked layers, attention or conv kernels: give them
  ``muon_weight_dimension_numbers``) and leaves on ROOT that are not weight
  matrices (a dimension of 1, a 2-D ``bias`` or ``scale``).

  Example:
    >>> import jax.numpy as jnp
    >>> import root_optax
    >>> params = {'embed': jnp.zeros((256, 64)), 'w': jnp.zeros((64, 128)),
    ...           'b': jnp.zeros(128)}
    >>> print(root_optax.describe(
    ...     params, param_labels=root_optax.route_by_path(('embed',))))
    1 leaf to ROOT (1 shape group: 1 x 64x128), 2 to AdamW
    leaf   shape      dtype    goes to  matrix group  why
    b      (128,)     float32  adam                   rank 1
    embed  (256, 64)  float32  adam                   path has 'embed'
    w      (64, 128)  float32  root     1 x 64x128    2-D

  Args:
    params: The parameters (arrays or `jax.ShapeDtypeStruct`s).
    param_labels: As `root`'s ``param_labels``.
    muon_weight_dimension_numbers: As `root`'s.

  Returns:
    The summary line of `summary`, then one row per leaf.
  """
  found = routes(params, param_labels, muon_weight_dimension_numbers)
  rows = [("leaf", "shape", "dtype", "goes to", "matrix group", "why")]
  for r in found:
    group = f"{r.matrices} x {r.group[0]}x{r.group[1]}" if r.group else ""
    rows.append((r.path, str(r.shape), r.dtype, r.label, group, r.reason))
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
  return "\n".join([summary(found)] + lines)


def logs_routes_at_init(tx: optax.GradientTransformation, param_labels: labels_lib.LabelsOrFn,
                        muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn
                        ) -> optax.GradientTransformation:
  """``tx`` whose first ``init`` logs where `root()` sends each leaf.

  The line is `summary`, at INFO on the ``'root_optax'`` logger, from process
  0 only, before ``tx.init`` runs; later calls of ``init`` do not log.

  Args:
    tx: The transform, `root()`'s `optax.partition`.
    param_labels: As `root`'s ``param_labels``.
    muon_weight_dimension_numbers: As `root`'s.

  Returns:
    An `optax.GradientTransformation` with ``tx``'s update and state.
  """
  logged = False

  def init_fn(params):
    nonlocal logged
    if not logged and jax.process_index() == 0 and logger.isEnabledFor(logging.INFO):
      logged = True
      logger.info("root(): %s", summary(routes(params, param_labels, muon_weight_dimension_numbers)))
    return tx.init(params)
  return optax.GradientTransformation(init_fn, tx.update)
