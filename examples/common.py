"""Shared pieces of the examples: optimizers, gradient noise, outputs.

Every optimizer is built from one run config (``optimizer``, ``lr`` and, for
ROOT, ``root`` keyword arguments) with the same warmup-cosine schedule, the same
weight decay, and the same AdamW routing of embeddings and heads, so the only
difference between two runs is the optimizer.
"""

from __future__ import annotations

import copy
import csv
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from absl import flags
from ml_collections import config_flags
from optax.contrib import MuonDimensionNumbers

import root_optax

REPO = pathlib.Path(__file__).resolve().parents[1]
ADAMW, MUON, ROOT = "adamw", "muon", "root"
OPTIMIZERS = (ADAMW, MUON, ROOT)
NOISE_KINDS = ("none", "spikes", "student_t")
# Leaves whose path contains one of these go to AdamW inside Muon and ROOT, as
# in the ROOT reference script (embeddings, LM head, classifier head).
ADAM_PATHS = ("embed", "lm_head", "head")


def schedule(lr: float, warmup: int, total: int) -> optax.Schedule:
  """Linear warmup to ``lr`` then cosine decay to ``0.1 * lr``."""
  return optax.warmup_cosine_decay_schedule(
      0.0, lr, max(warmup, 1), max(total, warmup + 1), end_value=0.1 * lr)


def muon_dimension_numbers(params: Any) -> Any:
  """Muon dimension numbers: None (AdamW) where `route_by_path` says ``'adam'``."""
  labels = root_optax.route_by_path(ADAM_PATHS)(params)
  return jax.tree.map(
      lambda label: MuonDimensionNumbers() if label == "root" else None, labels)


def make_optimizer(run: ml_collections.ConfigDict, common: ml_collections.ConfigDict,
                   total_steps: int) -> optax.GradientTransformation:
  """Builds one run's optimizer.

  Args:
    run: ``optimizer`` in `OPTIMIZERS`, ``lr``, and for ROOT ``root`` (keyword
      arguments of `root_optax.root`).
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
    return root_optax.root(
        lr, weight_decay=wd, adam_b1=b1, adam_b2=b2,
        param_labels=root_optax.route_by_path(ADAM_PATHS), **kwargs)
  raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {run.optimizer!r}")


def inject_noise(grads: Any, key: jax.Array, noise: Any) -> Any:
  """Corrupts gradients with heavy-tailed noise (the robustness experiment).

  * ``noise.kind == 'spikes'``: each entry is multiplied by ``noise.spike_scale``
    with probability ``noise.fraction`` (rare, huge, sign-preserving outliers).
  * ``noise.kind == 'student_t'``: adds ``noise.t_scale * rms(g) * t`` to every
    entry of each leaf, ``t`` Student-t with ``noise.df`` degrees of freedom
    (``df <= 2``: infinite variance, heavy tails; df = 2 is sampled by its
    inverse CDF).

  The key depends only on the step, so every optimizer sees the same
  corruption pattern.
  """
  if noise.kind == "none":
    return grads
  if noise.kind not in NOISE_KINDS:
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {noise.kind!r}")
  leaves, treedef = jax.tree.flatten(grads)
  keys = jax.random.split(key, len(leaves))

  def corrupt(g, k):
    if noise.kind == "spikes":
      hit = jax.random.bernoulli(k, noise.fraction, g.shape)
      return jnp.where(hit, noise.spike_scale * g, g)
    rms = jnp.sqrt(jnp.mean(jnp.square(g)))
    return g + noise.t_scale * rms * _student_t(k, noise.df, g.shape, g.dtype)

  return jax.tree.unflatten(treedef, [corrupt(g, k) for g, k in zip(leaves, keys)])


def _student_t(key: jax.Array, df: float, shape, dtype) -> jax.Array:
  """Student-t samples; df = 2 by its closed-form inverse CDF (``jax.random.t``'s
  gamma sampler costs more than a training step of the LM example on CPU)."""
  if df != 2:
    return jax.random.t(key, df, shape, dtype)
  u = jax.random.uniform(key, shape, jnp.float32, minval=1e-7, maxval=1 - 1e-7)
  return ((2 * u - 1) / jnp.sqrt(2 * u * (1 - u))).astype(dtype)


def apply_quick(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``config.quick`` (nested overrides) applied."""
  config = copy.deepcopy(config)
  _merge(config, config.quick)
  return config


def _merge(node: ml_collections.ConfigDict, overrides: ml_collections.ConfigDict) -> None:
  for key, value in overrides.items():
    if isinstance(value, ml_collections.ConfigDict):
      _merge(node[key], value)
    else:
      node[key] = value


def selected_runs(config: ml_collections.ConfigDict) -> list:
  """The runs named in ``config.only`` (comma-separated), or all runs."""
  names = [n for n in config.only.split(",") if n]
  unknown = set(names) - {r.name for r in config.runs}
  if unknown:
    raise ValueError(f"config.only names unknown runs {sorted(unknown)}")
  return [r for r in config.runs if not names or r.name in names]


def robustness_rows(summaries: Sequence[dict]) -> list[dict]:
  """Pivots run summaries to one row per ``family``: final val loss per noise kind.

  Adds ``delta_<kind> = <kind> - none`` (the degradation from clean training).
  """
  table: dict[str, dict] = {}
  for s in summaries:
    table.setdefault(s["family"], {"optimizer": s["family"]})[s["noise"]] = s["final_val"]
  for row in table.values():
    for kind in NOISE_KINDS[1:]:
      if kind in row and "none" in row:
        row[f"delta_{kind}"] = row[kind] - row["none"]
  return list(table.values())


def write_csv(path: pathlib.Path, rows: Sequence[dict]) -> None:
  """Writes a list of dicts (the union of their keys as columns)."""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  """A Markdown table of ``rows`` (floats with 4 decimals)."""
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
  """Trailing moving average (shorter at the start)."""
  values = np.asarray(values, dtype=np.float64)
  csum = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (csum[idx] - csum[lo]) / (idx - lo)


def pyplot():
  """matplotlib's pyplot with the non-interactive Agg backend."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def make_workdir(workdir: str) -> pathlib.Path:
  path = pathlib.Path(os.path.expanduser(workdir))
  path.mkdir(parents=True, exist_ok=True)
  return path


def make_main(default_config: str, train_and_evaluate: Callable[[Any, str], Any]):
  """Defines flax-style flags and returns an `absl.app` main function.

  Flags: ``--config`` (an ml_collections config file, default
  ``configs/<default_config>``; fields overridable as ``--config.steps 100``),
  ``--workdir`` (default ``runs/<config.name>``) and ``--quick`` (apply the
  config's ``quick`` overrides).
  """
  config_flag = config_flags.DEFINE_config_file(
      "config", str(REPO / "configs" / default_config), "Experiment config file.",
      lock_config=False)
  workdir_flag = flags.DEFINE_string("workdir", None, "Output folder (default runs/<config.name>).")
  quick_flag = flags.DEFINE_bool("quick", False, "Apply the config's `quick` overrides (smoke run).")

  def main(argv) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quick = quick_flag.value
    config = apply_quick(config_flag.value) if quick else config_flag.value
    workdir = workdir_flag.value or str(REPO / "runs" / (config.name + ("_quick" if quick else "")))
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    print(f"total wall time: {time.perf_counter() - start:.1f} s on "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")

  return main
