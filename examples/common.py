"""Shared pieces of the examples: optimizers, gradient noise, outputs.

Every optimizer is built from one run config (``optimizer``, ``lr`` and, for
ROOT, ``root`` keyword arguments) with the same warmup-cosine schedule, the same
weight decay, and the same AdamW routing of embeddings and heads, so the only
difference between two runs is the optimizer.

It also holds the gradient corruptions of the robustness experiment
(`inject_noise`) and the seeded statistics every LM table is built from
(`seed_stats`, `paired_difference`, `aggregate_runs`, `robustness_rows`).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.metadata
import importlib.util
import math
import os
import pathlib
import sys
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
NOISE_KINDS = ("none", "spikes", "student_t", "bursts")
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


def is_hidden(grads: Any) -> Any:
  """A bool tree like ``grads``: True for the hidden matrices.

  Hidden = 2-D and not routed to AdamW by `ADAM_PATHS` (embedding, LM head,
  classifier head), i.e. exactly the leaves that Muon and ROOT orthogonalise.
  """
  labels = root_optax.route_by_path(ADAM_PATHS)(grads)
  return jax.tree.map(lambda label: label == "root", labels)


# fold_in tags: the per-step burst decision and the per-step leaf keys are
# separate streams of the same (noise seed, step) key.
# _BURST_TAG = 0 is the first tag (0, 1, ...) with >= 2 burst steps in 300 for
# each of the default seeds 0, 1, 2 (5, 4 and 2; `tests/test_examples.py`).
_BURST_TAG, _LEAVES_TAG = 0, 0x6C656166


# Tag of the noise stream of a seed (the model init uses nnx.Rngs(seed) directly).
_NOISE_STREAM = 0x6E6F6973


def noise_key(seed: int) -> jax.Array:
  """The gradient-corruption key of ``seed`` (`common.step_noise_key` per step)."""
  return jax.random.fold_in(jax.random.key(seed), _NOISE_STREAM)


def step_noise_key(noise_key: jax.Array, step) -> jax.Array:
  """The corruption key of ``step``: a function of (noise seed, step) only."""
  return jax.random.fold_in(noise_key, step)


def is_burst_step(key: jax.Array, burst_prob: float) -> jax.Array:
  """Whether the step with corruption key ``key`` is a 'bursts' step (Bernoulli)."""
  return jax.random.bernoulli(jax.random.fold_in(key, _BURST_TAG), burst_prob)


def burst_steps(noise_key: jax.Array, steps: int, burst_prob: float) -> list[int]:
  """The steps in ``1..steps`` on which 'bursts' corrupts the gradients."""
  keys = jax.vmap(lambda t: step_noise_key(noise_key, t))(jnp.arange(1, steps + 1))
  hits = np.asarray(jax.vmap(lambda k: is_burst_step(k, burst_prob))(keys))
  return [int(t) for t in np.flatnonzero(hits) + 1]


def inject_noise(grads: Any, key: jax.Array, noise: Any) -> Any:
  """Corrupts gradients (the robustness experiment); the loss stays clean.

  ``key`` is `step_noise_key` (noise seed, step), so the corruption pattern is
  the same for every optimizer. ``rms`` and ``||G||`` are those of the clean
  leaf.

  * ``'spikes'``: in every leaf, each entry independently with probability
    ``noise.fraction`` (0.1%) gets an *added* ``+-noise.spike_scale * rms``
    (100 x, random sign), every step.
  * ``'student_t'``: adds ``noise.t_scale * rms * t`` to every entry of each
    leaf, ``t`` Student-t with ``noise.df`` degrees of freedom (``df <= 2``:
    infinite variance, heavy tails; df = 2 is sampled by its inverse CDF).
  * ``'bursts'``: on a step with ``is_burst_step`` (Bernoulli(``burst_prob``)
    per step, the same decision for all leaves), every hidden matrix
    (`is_hidden`) gets ``G += noise.burst_scale * ||G||_F * Z / ||Z||_F``, ``Z``
    Gaussian: a random direction 30x the gradient's own norm. Other leaves and
    other steps are untouched.
  """
  if noise.kind == "none":
    return grads
  if noise.kind not in NOISE_KINDS:
    raise ValueError(f"noise kind must be one of {NOISE_KINDS}, got {noise.kind!r}")
  hidden = jax.tree.leaves(is_hidden(grads)) if noise.kind == "bursts" else None
  leaves, treedef = jax.tree.flatten(grads)
  keys = jax.random.split(jax.random.fold_in(key, _LEAVES_TAG), len(leaves))
  burst = is_burst_step(key, noise.burst_prob) if noise.kind == "bursts" else None

  def rms(g):
    return jnp.sqrt(jnp.mean(jnp.square(g.astype(jnp.float32))))

  def corrupt(i, g, k):
    if noise.kind == "spikes":
      k_hit, k_sign = jax.random.split(k)
      hit = jax.random.bernoulli(k_hit, noise.fraction, g.shape)
      sign = jax.random.rademacher(k_sign, g.shape, jnp.float32)
      added = jnp.where(hit, noise.spike_scale * rms(g) * sign, 0.0)
      return (g + added).astype(g.dtype)
    if noise.kind == "student_t":
      return g + noise.t_scale * rms(g) * _student_t(k, noise.df, g.shape, g.dtype)
    if not hidden[i]:  # bursts
      return g

    def add_burst(g):
      z = jax.random.normal(k, g.shape, jnp.float32)
      norm = jnp.linalg.norm(g.astype(jnp.float32))
      return (g + noise.burst_scale * norm * z / jnp.linalg.norm(z)).astype(g.dtype)

    return jax.lax.cond(burst, add_burst, lambda g: g, g)  # no sampling on calm steps

  return jax.tree.unflatten(treedef, [corrupt(i, g, k) for i, (g, k) in enumerate(zip(leaves, keys))])


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


def worker_tasks(jobs: list[tuple[int, int]], workers: int) -> list[list[tuple[int, int]]]:
  """Groups the (run, seed) jobs into tasks of one run's seeds.

  A task runs in one worker, which compiles the run's step once for all its
  seeds; each run's seeds are split into just enough chunks that there are at
  least ``workers`` tasks.
  """
  by_run: dict[int, list] = {}
  for r, seed in jobs:
    by_run.setdefault(r, []).append((r, seed))
  chunks = max(1, -(-workers // len(by_run)))
  tasks = []
  for run_jobs_ in by_run.values():
    n = min(chunks, len(run_jobs_))
    size = -(-len(run_jobs_) // n)
    tasks += [run_jobs_[i:i + size] for i in range(0, len(run_jobs_), size)]
  return tasks


# --- seeded statistics -------------------------------------------------------
# Every LM claim is over seeds: seed s fixes the initialisation, the batch order
# and the gradient corruption of *every* run, so runs are paired by seed.


def seed_stats(values: Sequence[float]) -> dict:
  """``{'n', 'mean', 'std'}`` over seeds; ``std`` is the sample std (ddof 1),
  NaN for a single seed."""
  v = np.asarray(values, dtype=np.float64)
  std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
  return {"n": len(v), "mean": float(v.mean()) if len(v) else math.nan, "std": std}


def paired_difference(values: dict, base: dict) -> dict:
  """Mean of ``values[s] - base[s]`` over the seeds ``s`` both have, its
  standard error (std of the differences / sqrt(n)) and ``significant``
  (|mean| > 2 SE; never for fewer than 2 seeds)."""
  seeds = [s for s in values if s in base]
  diffs = np.asarray([values[s] - base[s] for s in seeds], dtype=np.float64)
  stats = seed_stats(diffs)
  se = stats["std"] / math.sqrt(stats["n"]) if stats["n"] > 1 else math.nan
  significant = bool(stats["n"] > 1 and abs(stats["mean"]) > 2 * se)
  return {"n": stats["n"], "mean": stats["mean"], "se": se, "significant": significant}


def _by_seed(rows: Sequence[dict], key: str) -> dict:
  return {r["seed"]: float(r[key]) for r in rows}


def _family(row: dict) -> str:
  return row.get("family") or row["run"]


def aggregate_runs(summaries: Sequence[dict], baseline: str = "",
                   metrics: Sequence[str] = ("final_train", "final_val", "ms_per_step"),
                   paired: Sequence[str] = ("final_val", "final_train")) -> list[dict]:
  """One row per run (in first-seen order) from per-seed summaries.

  Args:
    summaries: Per-(run, seed) dicts with ``run``, ``seed``, ``noise`` and the
      metrics (and optionally ``family``).
    baseline: A run or family name; each run is compared, seed by seed, with
      the baseline run of the same ``noise`` kind. Empty: no comparison.
    metrics: Keys summarised as ``<key>_mean`` / ``<key>_std``.
    paired: Keys compared with the baseline as ``d_<key>_mean``, ``d_<key>_se``,
      ``d_<key>_sig`` (run - baseline).

  Returns:
    Dicts with ``run``, ``family``, ``noise``, ``seeds`` (the seeds, sorted),
    ``n`` and the statistics above.
  """
  groups: dict[str, list[dict]] = {}
  for s in summaries:
    groups.setdefault(s["run"], []).append(s)
  base_of = {}
  for name, rows in groups.items():
    if baseline and baseline in (name, _family(rows[0])):
      base_of.setdefault(rows[0].get("noise", "none"), rows)
  out = []
  for name, rows in groups.items():
    row = {"run": name, "family": _family(rows[0]), "noise": rows[0].get("noise", "none"),
           "seeds": sorted(r["seed"] for r in rows), "n": len(rows)}
    for key in metrics:
      stats = seed_stats([float(r[key]) for r in rows])
      row[f"{key}_mean"], row[f"{key}_std"] = stats["mean"], stats["std"]
    base = base_of.get(row["noise"])
    row["is_baseline"] = base is rows
    if base is not None and base is not rows:
      for key in paired:
        d = paired_difference(_by_seed(rows, key), _by_seed(base, key))
        row[f"d_{key}_mean"], row[f"d_{key}_se"], row[f"d_{key}_sig"] = (
            d["mean"], d["se"], d["significant"])
    out.append(row)
  return out


def robustness_rows(summaries: Sequence[dict], baseline: str = "") -> list[dict]:
  """One row per (``family``, noise kind) of the robustness experiment.

  ``val_mean`` / ``val_std``: final validation loss over seeds. For a noisy
  kind, ``damage_*``: the paired (per-seed) increase over the same family's
  clean run (mean, SE, significant), and against the ``baseline`` family at
  the same kind: ``ratio`` = mean damage / the baseline's mean damage (NaN
  unless the baseline's damage is positive and exceeds 2 SE) and
  ``vs_base_*`` = paired (damage - baseline's damage).
  """
  cell: dict[tuple, dict] = {}
  order: list[tuple] = []
  for s in summaries:
    k = (_family(s), s["noise"])
    if k not in cell:
      order.append(k)
    cell.setdefault(k, {})[s["seed"]] = float(s["final_val"])
  damage = {}
  for fam, kind in order:
    if kind != "none" and (fam, "none") in cell:
      clean = cell[(fam, "none")]
      damage[(fam, kind)] = {s: v - clean[s] for s, v in cell[(fam, kind)].items() if s in clean}
  rows = []
  for fam, kind in order:
    stats = seed_stats(list(cell[(fam, kind)].values()))
    row = {"family": fam, "noise": kind, "n": stats["n"],
           "val_mean": stats["mean"], "val_std": stats["std"]}
    if (fam, kind) in damage:
      d = paired_difference(damage[(fam, kind)], {s: 0.0 for s in damage[(fam, kind)]})
      row.update(damage_mean=d["mean"], damage_se=d["se"], damage_sig=d["significant"])
      base = damage.get((baseline, kind))
      if base is not None and fam != baseline:
        b = paired_difference(base, {s: 0.0 for s in base})
        # A ratio only means something when the baseline is clearly damaged.
        row["ratio"] = d["mean"] / b["mean"] if b["significant"] and b["mean"] > 0 else math.nan
        v = paired_difference(damage[(fam, kind)], base)
        row.update(vs_base_mean=v["mean"], vs_base_se=v["se"], vs_base_sig=v["significant"])
    rows.append(row)
  return rows


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
  """``'1.2345 ± 0.0123'`` (``'1.2345'`` when the std is undefined)."""
  if not math.isfinite(mean):
    return "n/a"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def fmt_diff(mean: float, se: float, significant: bool, digits: int = 4) -> str:
  """``'+0.0123 ± 0.0040 *'``: a paired difference ± SE, ``*`` when |d| > 2 SE."""
  if not math.isfinite(mean):
    return "n/a"
  text = f"{mean:+.{digits}f}" + (f" ± {se:.{digits}f}" if math.isfinite(se) else "")
  return text + (" *" if significant else "")


def seeds_phrase(seeds: Sequence[int]) -> str:
  seeds = list(seeds)
  return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def format_aggregate(rows: Sequence[dict], baseline: str = "") -> str:
  """The Markdown table of `aggregate_runs` rows."""
  has_diff = any("d_final_val_mean" in r for r in rows)
  columns = ["run", "seeds", "final train", "final val", "ms / step"]
  if has_diff:
    columns += [f"Δ val vs {baseline}", f"Δ train vs {baseline}"]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for r in rows:
    cells = [r["run"], str(r["n"]), fmt_mean_std(r["final_train_mean"], r["final_train_std"]),
             fmt_mean_std(r["final_val_mean"], r["final_val_std"]),
             fmt_mean_std(r["ms_per_step_mean"], r["ms_per_step_std"], 1)]
    if has_diff:
      for key in ("final_val", "final_train"):
        if f"d_{key}_mean" in r:
          cells.append(fmt_diff(r[f"d_{key}_mean"], r[f"d_{key}_se"], r[f"d_{key}_sig"]))
        else:
          cells.append("(baseline)" if r.get("is_baseline") else "—")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_robustness(rows: Sequence[dict], baseline: str = "") -> str:
  """The Markdown table of `robustness_rows`."""
  columns = ["family", "noise", "seeds", "final val", "damage (noisy − clean)"]
  if baseline:
    columns += [f"damage / {baseline}'s", f"damage − {baseline}'s"]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for r in rows:
    ratio = r.get("ratio", math.nan)
    cells = [r["family"], r["noise"], str(r["n"]), fmt_mean_std(r["val_mean"], r["val_std"]),
             fmt_diff(r["damage_mean"], r["damage_se"], r["damage_sig"]) if "damage_mean" in r else ""]
    if baseline:
      cells += [f"{ratio:.2f}" if math.isfinite(ratio) else "",
                fmt_diff(r["vs_base_mean"], r["vs_base_se"], r["vs_base_sig"])
                if "vs_base_mean" in r else ""]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


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


# XLA flags of a single-threaded CPU process (`examples/train_lm.py`):
# Eigen's thread pool off, so two workers on two cores do not compete for both.
SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false"


def single_threaded_xla(pin: bool = False) -> bool:
  """Makes this process (and the workers it starts) run XLA on one thread.

  Turns XLA's CPU thread pool off (`SINGLE_THREAD_XLA_FLAGS`) and, with
  ``pin``, restricts this process to its first allowed core: XLA sizes its CPU
  thread pools by the cores a process may use, and some kernels split their
  work (and round) differently for another size. Two such processes give the
  same bits for the same run; a multi-threaded one differs in the last float32
  bit, which a few dozen training steps amplify to ~1e-3 in a loss. Must come
  before the first JAX computation; returns False when it came too late.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_cpu_multi_thread_eigen" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " " + SINGLE_THREAD_XLA_FLAGS).strip()
  if pin and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return not xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return True


def _accelerator_plugin_installed() -> bool:
  """Whether a JAX GPU/TPU plugin is importable (then JAX may pick it)."""
  if importlib.util.find_spec("libtpu") is not None:
    return True
  try:
    return bool(list(importlib.metadata.entry_points(group="jax_plugins")))
  except Exception:  # pylint: disable=broad-except
    return False


def default_to_cpu() -> None:
  """Uses the CPU backend unless an accelerator was requested or is installed.

  Without this, JAX probes for a TPU first and logs ``Unable to initialize
  backend 'tpu'`` on every CPU machine. ``JAX_PLATFORMS`` (e.g. ``cuda``), when
  set, wins; so does an installed GPU/TPU plugin. Must run before the first
  JAX computation.
  """
  if os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME"):
    return
  if not _accelerator_plugin_installed():
    jax.config.update("jax_platforms", "cpu")


def progress_enabled() -> bool:
  """Progress bars only for a terminal (no bar fragments in log files)."""
  return sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def environ(**values: str):
  """Temporarily sets environment variables (inherited by spawned workers)."""
  old = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def make_main(default_config: str, train_and_evaluate: Callable[[Any, str], Any]):
  """Defines flax-style flags and returns an `absl.app` main function.

  Flags: ``--config`` (an ml_collections config file, default
  ``configs/<default_config>``; fields overridable as ``--config.steps 100``),
  ``--workdir`` (default ``runs/<config.name>``) and ``--quick`` (apply the
  config's ``quick`` overrides). Selects the CPU backend unless an
  accelerator is requested or installed (`default_to_cpu`).
  """
  default_to_cpu()
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
