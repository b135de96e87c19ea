"""Per-step, per-shape-group figures read from an optimizer state."""

from typing import Any

import jax
import numpy as np

from root_optax._src import bursts
from root_optax._src import gate
from root_optax._src import outliers



def _value(x: Any) -> np.ndarray:
  """An array on the host; unwraps containers such as Flax NNX variables."""
  return np.asarray(getattr(x, "value", x))


def _stage_figures(name: str, stats: Any) -> dict[str, float]:
  """Per shape group: sums of ``caught``, means of the other figures."""
  shapes = [tuple(int(v) for v in _value(x)) for x in jax.tree.leaves(stats.matrix_shape)]
  groups: dict[str, dict[str, list]] = {}
  for figure in stats._fields[1:]:
    for (m, n), values in zip(shapes, jax.tree.leaves(getattr(stats, figure))):
      groups.setdefault(f"{name}/{m}x{n}", {}).setdefault(figure, []).append(_value(values).ravel())
  out = {}
  for key, group in groups.items():
    for figure, parts in group.items():
      values = np.concatenate(parts)
      out[f"{key}/{figure}"] = float(values.sum() if figure == "caught" else values.mean())
  return out


def diagnostics(opt_state: Any) -> dict[str, float]:
  """Outlier and burst figures of the last step, per stage and matrix shape group.

  Reads the states of `gate_outliers`, `soft_threshold_outliers` (with
  ``track_outliers=True``, as `root` builds them) and `clip_bursts` anywhere
  in ``opt_state`` (an
  `optax.chain`, `optax.partition`, `optax.inject_hyperparams`, a Flax
  ``nnx.Optimizer(...).opt_state``...). Host-side only: call it outside
  ``jit``; nothing is recompiled.

  Example:

    >>> import jax.numpy as jnp, root_optax
    >>> tx = root_optax.root(1e-2)
    >>> params = {"w": jnp.ones((4, 8))}
    >>> state = tx.init(params)
    >>> _, state = tx.update({"w": jnp.ones((4, 8))}, state, params)
    >>> sorted(root_optax.diagnostics(state))[:2]
    ['bursts/4x8/caught', 'bursts/4x8/norm_ema']

  Args:
    opt_state: An optimizer state.

  Returns:
    A flat dict ``{'<stage>/<min>x<max>/<figure>': float}``, means over the
    matrices of the group: for ``gradient_outliers`` (the gate before the
    momentum) ``clipped_fraction``, ``removed_norm`` (the norm clipped away)
    and ``row_scale`` / ``col_scale`` (mean of the row and column histories);
    for ``momentum_outliers`` (the paper's clip) ``clipped_fraction``,
    ``threshold`` and ``removed_norm`` (``||T_eps[M]||_F``); for ``bursts``
    ``caught`` (bursts rescaled so far, summed over the group) and ``norm_ema``.
  """
  out: dict[str, float] = {}
  stages = (gate.GateOutliersState, outliers.SoftThresholdState, bursts.ClipBurstsState)
  is_stage = lambda x: isinstance(x, stages)
  for state in jax.tree.leaves(opt_state, is_leaf=is_stage):
    if is_stage(state):
      for name, stats in (state.stats or {}).items():
        out.update(_stage_figures(name, stats))
  return out
