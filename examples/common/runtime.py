"""What every example program shares: flags, configs, workers, outputs.

`make_main` gives each example its flax-style ``main`` (``--config``,
``--workdir``, ``--quick``). The rest: selecting runs and splitting them over
worker processes, single-threaded XLA (bit-identical losses in any process),
the CPU backend by default, CSV files and plots.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import importlib.metadata
import importlib.util
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

REPO = pathlib.Path(__file__).resolve().parents[2]


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


def _set_path(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  """Sets the field ``path`` (dotted, as in ``--config.model.d_model``)."""
  *parents, leaf = path.split(".")
  for name in parents:
    config = config[name]
  config[leaf] = value


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


def write_csv(path: pathlib.Path, rows: Sequence[dict]) -> None:
  """Writes a list of dicts (the union of their keys as columns)."""
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)


def smooth(values: Sequence[float], window: int) -> np.ndarray:
  """Trailing moving average (shorter at the start)."""
  values = np.asarray(values, dtype=np.float64)
  csum = np.cumsum(np.insert(values, 0, 0.0))
  idx = np.arange(1, len(values) + 1)
  lo = np.maximum(idx - window, 0)
  return (csum[idx] - csum[lo]) / (idx - lo)


def pyplot():
  """matplotlib's pyplot with the non-interactive Agg backend.

  matplotlib logs ``generated new fontManager`` at INFO the first time it runs
  on a machine, which absl (INFO by default) prints in its log format: its
  logger is set to WARNING unless a level was chosen for it already.
  """
  mpl_logger = logging.getLogger("matplotlib")
  if mpl_logger.level == logging.NOTSET:
    mpl_logger.setLevel(logging.WARNING)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def make_workdir(workdir: str) -> pathlib.Path:
  path = pathlib.Path(os.path.expanduser(workdir))
  path.mkdir(parents=True, exist_ok=True)
  return path


# XLA flags of a single-threaded CPU process (`examples/lm/train.py`):
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
  config's ``quick`` overrides; ``--config.*`` flags still win). Selects the
  CPU backend unless an accelerator is requested or installed
  (`default_to_cpu`).
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
    config = config_flag.value
    if quick:  # the quick overrides, then the command line's `--config.*` over them
      config = apply_quick(config)
      for path, value in config_flags.get_override_values(flags.FLAGS["config"]).items():
        _set_path(config, path, value)
    workdir = workdir_flag.value or str(REPO / "runs" / (config.name + ("_quick" if quick else "")))
    start = time.perf_counter()
    train_and_evaluate(config, workdir)
    print(f"total wall time: {time.perf_counter() - start:.1f} s on "
          f"{jax.device_count()} x {jax.devices()[0].device_kind}")

  return main
