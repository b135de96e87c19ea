"""The optimizers the examples compare, built from one run config.

Every optimizer has the same warmup-cosine schedule, the same weight decay, and
the same AdamW routing of embeddings and heads, so the only difference between
two runs is the optimizer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax.contrib import MuonDimensionNumbers

import root_optax

ADAMW, MUON, ROOT = "adamw", "muon", "root"
OPTIMIZERS = (ADAMW, MUON, ROOT)
# Leaves whose path contains one of these go to AdamW inside Muon and ROOT, as
# in the ROOT reference script (embeddings, LM head, classifier head).
ADAM_PATHS = ("embed", "lm_head", "head")


def schedule(lr: float, warmup: int, total: int) -> optax.Schedule:
  """Linear warmup to ``lr`` then cosine decay to ``0.1 * lr``."""
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, max(warmup, 1), max(total, warmup + 1), end_value=0.1 * lr)


# `route_by_path(ADAM_PATHS)` without its warning for a pattern no path contains:
# optax's Muon calls `muon_dimension_numbers` on subtrees that hold no embedding
# or head, and `is_hidden` may see one too.
_ROUTER = root_optax.route_by_path(ADAM_PATHS, warn_unmatched=False)


def muon_dimension_numbers(params: Any) -> Any:
  """Muon dimension numbers: None (AdamW) where `route_by_path` says ``'adam'``."""
  labels = _ROUTER(params)
  return jax.tree.map(
      lambda label: MuonDimensionNumbers() if label == "root" else None, labels)


# Named weight-decay masks a config can ask for (configs hold data, not functions).
WEIGHT_DECAY_MASKS = {
    # Decay the matrices only: biases, norm scales and other vectors are spared.
    "matrices": lambda params: jax.tree.map(lambda x: jnp.ndim(x) >= 2, params),
}


def make_optimizer(run: ml_collections.ConfigDict, common: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Builds one run's optimizer.

  Args:
    run: ``optimizer`` in `OPTIMIZERS`, ``lr``, and for ROOT ``root`` (keyword
      arguments of `root_optax.root`; a ``weight_decay_mask`` is a name in
      `WEIGHT_DECAY_MASKS`).
    common: ``warmup``, ``weight_decay``, ``b1``, ``b2`` shared by all runs.
    total_steps: Length of the cosine schedule.

  Returns:
    An `optax.GradientTransformation`.
  """
  lr = schedule(run.lr, common.warmup, total_steps)
  wd, b1, b2 = common.weight_decay, common.b1, common.b2
  if run.optimizer == ADAMW:
    return optax.adamw(lr, b1=b1, b2=b2, eps=1e-8, weight_decay=wd)
  if run.optimizer == MUON:
    # consistent_rms=0.2 is the same Moonlight RMS matching that ROOT uses.
    return optax.contrib.muon(
        lr, beta=0.95, nesterov=True, weight_decay=wd, consistent_rms=0.2,
        adam_b1=b1, adam_b2=b2, adam_weight_decay=wd,
        muon_weight_dimension_numbers=muon_dimension_numbers)
  if run.optimizer == ROOT:
    kwargs = dict(run.get("root", {}))
    if "weight_decay_mask" in kwargs:
      kwargs["weight_decay_mask"] = WEIGHT_DECAY_MASKS[kwargs["weight_decay_mask"]]
    return root_optax.root(
        lr, weight_decay=wd, adam_b1=b1, adam_b2=b2,
        param_labels=root_optax.route_by_path(ADAM_PATHS), **kwargs)
  raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {run.optimizer!r}")


def is_hidden(grads: Any) -> Any:
  """A bool tree like ``grads``: True for the hidden matrices.

  Hidden = 2-D and not routed to AdamW by `ADAM_PATHS` (embedding, LM head,
  classifier head), i.e. exactly the leaves that Muon and ROOT orthogonalise.
  """
  labels = _ROUTER(grads)
  return jax.tree.map(lambda label: label == "root", labels)
