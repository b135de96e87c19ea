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

from root_optax import dimensions
from root_optax import labels as labels_lib

logger = logging.getLogger("root_optax")


class Route(NamedTuple):
  """Where one parameter leaf goes.

  Attributes:
    path: The leaf's ``/``-joined key path.
    shape: Its shape.
    label: ``'root'`` or ``'adam'``.
    reason: Why: ``'2-D'``, ``'rank 1'``, ``'param_labels'``, ...
    matrices: For ROOT leaves, how many matrices its view holds (the product
      of its batch axes); 0 for AdamW leaves.
    group: For ROOT leaves, the ``(min, max)`` shape of its matrices; None
      for AdamW leaves.
  """
  path: str
  shape: tuple[int, ...]
  label: str
  reason: str
  matrices: int = 0
  group: Optional[tuple[int, int]] = None


def _default_reason(ndim: int) -> str:
  if ndim == 2:
    return "2-D"
  if ndim > 2:
    return f"rank {ndim}: pass muon_weight_dimension_numbers to orthogonalise it"
  return f"rank {ndim}"


def routes(params: Any, param_labels: labels_lib.LabelsOrFn = None,
           muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn = None) -> tuple[Route, ...]:
  """Per leaf of ``params``, where `root()` with these arguments sends it.

  Args:
    params: The parameters (arrays or `jax.ShapeDtypeStruct`s: only shapes
      are read).
    param_labels: As `root`'s ``param_labels``.
    muon_weight_dimension_numbers: As `root`'s.

  Returns:
    A tuple of `Route`, in the order of ``jax.tree.leaves(params)``.

  Raises:
    ValueError, TypeError: For labels other than ``'root'`` / ``'adam'`` or
      dimension numbers of the wrong kind, as `root` would at ``init``.
  """
  dimensions.validate_spec(muon_weight_dimension_numbers, "muon_weight_dimension_numbers")
  with_path, _ = jax.tree_util.tree_flatten_with_path(params)
  shapes = [tuple(np.shape(leaf)) for _, leaf in with_path]
  dims = dimensions.resolve(muon_weight_dimension_numbers, params)
  if param_labels is not None:
    labels = jax.tree.leaves(labels_lib.resolve_labels(param_labels, params))
    reasons = ["param_labels"] * len(labels)
  elif muon_weight_dimension_numbers is not None:
    labels = [labels_lib.ADAM if d is None else labels_lib.ROOT for d in dims]
    reasons = ["muon_weight_dimension_numbers"] * len(labels)
  else:
    labels = [labels_lib.ROOT if len(s) == 2 else labels_lib.ADAM for s in shapes]
    reasons = [_default_reason(len(s)) for s in shapes]
  out = []
  for (path, _), shape, label, reason, dim in zip(with_path, shapes, labels, reasons, dims):
    text = labels_lib.path_text(path)
    if label != labels_lib.ROOT or len(shape) < 2:
      out.append(Route(text, shape, label, reason))
      continue
    batch, fan_in, fan_out = dimensions.matrix_shape(shape, dim or dimensions.MATRIX)
    out.append(Route(text, shape, label, reason, batch, (min(fan_in, fan_out), max(fan_in, fan_out))))
  return tuple(out)


def summary(found: tuple[Route, ...]) -> str:
  """One line: how many leaves go where, and the ROOT shape groups."""
  groups: dict = {}
  for r in found:
    if r.group is not None:
      groups[r.group] = groups.get(r.group, 0) + r.matrices
  n_root = sum(r.label == labels_lib.ROOT for r in found)
  text = ", ".join(f"{n} x {a}x{b}" for (a, b), n in sorted(groups.items()))
  line = (f"{n_root} leaves to ROOT ({len(groups)} shape groups: {text}), "
          f"{len(found) - n_root} to AdamW")
  high_rank = [r.path for r in found if r.label == labels_lib.ADAM and len(r.shape) > 2]
  if high_rank:
    line += f"; rank > 2 on AdamW: {', '.join(high_rank)}"
  return line


def describe(params: Any, param_labels: labels_lib.LabelsOrFn = None,
             muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn = None) -> str:
  """A table of where `root()` sends each leaf of ``params``, and why.

  Example:
    >>> import jax.numpy as jnp
    >>> import root_optax
    >>> params = {'embed': jnp.zeros((256, 64)), 'w': jnp.zeros((64, 128)),
    ...           'b': jnp.zeros(128)}
    >>> print(root_optax.describe(
    ...     params, param_labels=root_optax.route_by_path(('embed',))))
    1 leaves to ROOT (1 shape groups: 1 x 64x128), 2 to AdamW
    leaf   shape      goes to  matrix group  why
    b      (128,)     adam                   param_labels
    embed  (256, 64)  adam                   param_labels
    w      (64, 128)  root     1 x 64x128    param_labels

  Args:
    params: The parameters (arrays or `jax.ShapeDtypeStruct`s).
    param_labels: As `root`'s ``param_labels``.
    muon_weight_dimension_numbers: As `root`'s.

  Returns:
    The summary line of `summary`, then one row per leaf.
  """
  found = routes(params, param_labels, muon_weight_dimension_numbers)
  rows = [("leaf", "shape", "goes to", "matrix group", "why")]
  for r in found:
    group = f"{r.matrices} x {r.group[0]}x{r.group[1]}" if r.group else ""
    rows.append((r.path, str(r.shape), r.label, group, r.reason))
  widths = [max(len(row[i]) for row in rows) for i in range(5)]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
  return "\n".join([summary(found)] + lines)


def log_once(params: Any, param_labels: labels_lib.LabelsOrFn,
             muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn, logged: list) -> None:
  """Logs `summary` at INFO on the ``'root_optax'`` logger, once per ``logged`` flag, process 0 only."""
  if logged[0] or jax.process_index() != 0 or not logger.isEnabledFor(logging.INFO):
    return
  logged[0] = True
  logger.info("root(): %s", summary(routes(params, param_labels, muon_weight_dimension_numbers)))
