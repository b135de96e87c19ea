r"""Does refining AdaNewton coefficients from a run's own momenta pay in training?

Usage (from the repository root)::

  python -m examples.lm.refine            # 3 seeds x 4 runs of 300 steps (~20 min, 2 cores)
  python -m examples.lm.refine --quick    # 1 seed, a small model, 20 steps

What it measures (``configs/lm_refine.py``), for every seed:

1. Trains the default ROOT run (the "ROOT" row of ``configs/lm.py``:
   `root_optax.root`'s defaults, Muon's triple) and records, every
   ``record_every`` steps, the singular values of the exact Newton-Schulz
   input of every hidden matrix: the Nesterov momentum ``G_t + beta M_t``,
   rebuilt from two consecutive momentum buffers (`nesterov_input`). Two
   `root_optax.SpectrumRecorder`\ s: "early" (steps <= ``early_steps``) and
   "all" (the whole run).
2. Fits per-shape, per-iteration coefficients with `root_optax.calibrate`
   (Frobenius normalisation, 5 steps) on each ``variants`` entry's mix of
   recorded and Gaussian spectra: "refined early" (what a refinement at step
   ``early_steps`` would have), "refined oracle" (the whole run's spectra)
   and the whole run's spectra alone.
3. Trains `root(ns_coeffs=<that table>)`, otherwise the defaults, from the
   same seed and from step 1 (for "refined early" an upper bound of a swap
   at step ``early_steps``: it gets the coefficients that much earlier).

Prints (and writes to ``table.md``) the final train / validation losses per
variant, mean ± std over seeds, each variant's paired difference from the
baseline (mean ± SE over seeds, ``*`` when it exceeds two SE), the per-seed
validation losses, every fit's Eq. 4 objective and safety check, and the
relative error ``||NS(X) - U V^T||_F / ||U V^T||_F`` of each coefficient set
on the recorded inputs. Writes ``summary.csv`` (one row per run and seed),
``fits.csv``, ``polar.csv``, ``curves.csv``, the recorded spectra
(``spectra_seed<s>_<early|all>.npz``) and the fitted tables
(``coefficients_seed<s>_<variant>.json``, loadable as ``ns_coeffs``) to
``--workdir`` (default ``runs/lm_refine``). Runs train as in
`examples.lm.train` (``config.workers`` single-threaded processes, losses
bit-identical to ``python -m examples.lm.main``'s for the same run and seed).
"""

from __future__ import annotations

import copy
import inspect
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from flax import nnx

import root_optax
from configs._runs import run as make_run
from examples.common import runtime
from examples.common import stats
from examples.lm import train
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import polynomials
from root_optax._src import spectra as spectra_lib

# root()'s momentum decay: the beta of the Nesterov input the baseline feeds Newton-Schulz.
ROOT_BETA = inspect.signature(root_optax.root).parameters["beta"].default
MUON = "Muon's triple"
EARLY, ALL = "early", "all"


def momentum_buffers(optimizer: nnx.Optimizer) -> list[np.ndarray]:
  """The momentum ``M_t`` of every ROOT matrix: the `optax.TraceState` of `root()`'s branch."""
  is_trace = lambda x: isinstance(x, optax.TraceState)
  (state,) = [s for s in jax.tree.leaves(optimizer.opt_state, is_leaf=is_trace) if is_trace(s)]
  return [np.asarray(leaf) for leaf in jax.tree.leaves(state.trace)]


def nesterov_input(momentum: list[np.ndarray], previous: list[np.ndarray] | None,
                   beta: float = ROOT_BETA) -> list[np.ndarray]:
  """Newton-Schulz's input ``G_t + beta M_t`` from the momenta after steps t and t - 1.

  ``M_t = beta M_{t-1} + G_t`` (`root_optax.trace`), so the input is
  ``(1 + beta) M_t - beta M_{t-1}``; ``previous`` None is ``M_0 = 0``.
  """
  if previous is None:
    previous = [np.zeros_like(m) for m in momentum]
  return [(1.0 + beta) * m - beta * p for m, p in zip(momentum, previous)]


class NewtonSchulzRecorder:
  """A `train.train_one` ``on_step`` callback recording what Newton-Schulz receives.

  Every ``every`` steps, the singular values of each matrix's Newton-Schulz
  input go to ``spectra['all']``, and up to step ``early_steps`` also to
  ``spectra['early']``; the inputs themselves are kept at ``keep_steps``.
  """

  def __init__(self, every: int, early_steps: int, keep_steps=(), beta: float = ROOT_BETA):
    self.every, self.early_steps, self.beta = every, early_steps, beta
    self.keep_steps = set(keep_steps)
    # Keep every recorded matrix: the fits resample them anyway.
    self.spectra = {name: root_optax.SpectrumRecorder(max_per_shape=2**62) for name in (EARLY, ALL)}
    self.matrices: dict[int, list[np.ndarray]] = {}
    self._previous = None

  def __call__(self, step: int, optimizer: nnx.Optimizer) -> None:
    if step % self.every == 0:
      inputs = nesterov_input(momentum_buffers(optimizer), self._previous, self.beta)
      self.spectra[ALL].record(inputs)
      if step <= self.early_steps:
        self.spectra[EARLY].record(inputs)
      if step in self.keep_steps:
        self.matrices[step] = inputs
    # The next recorded step needs this step's momentum.
    self._previous = momentum_buffers(optimizer) if (step + 1) % self.every == 0 else None


def train_and_record(config, run, seed: int, progress: bool = False) -> dict:
  """`train.train_one` with a `NewtonSchulzRecorder`; adds its ``spectra`` and ``matrices``."""
  recorder = NewtonSchulzRecorder(config.record_every, config.early_steps,
                                  keep_steps=(config.early_steps, config.steps),
                                  beta=run.root.to_dict().get("beta", ROOT_BETA))
  result = train.train_one(config, run, seed, progress, on_step=recorder)
  result["spectra"] = recorder.spectra
  result["matrices"] = recorder.matrices
  return result


def _slug(name: str) -> str:
  return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def fit_variants(config, spectra: dict, seed: int, out: pathlib.Path):
  """Fits every ``config.variants`` entry on one seed's recorded spectra.

  Args:
    config: ``variants``, ``calibration`` (keywords of `root_optax.calibrate`).
    spectra: ``{'early' | 'all': SpectrumRecorder}``.
    seed: The seed the spectra come from (names the files).
    out: Where the tables go.

  Returns:
    ``({variant: path of its table}, rows)``: the tables are written to
    ``out`` as JSON; one row per (variant, shape) with the fit's Eq. 4
    objective on its calibration spectra and its safety check.
  """
  paths, rows = {}, []
  for name, source, real_fraction in config.variants:
    results = []
    recorder = spectra[source]
    table = root_optax.calibrate(
        sorted(recorder.spectra), spectra=recorder, real_fraction=real_fraction,
        name=name, progress=results.append, **config.calibration.to_dict())
    paths[name] = out / f"coefficients_seed{seed}_{_slug(name)}.json"
    paths[name].write_text(json.dumps(table.to_json_dict(), indent=1))
    rows += [{"seed": seed, "variant": name, "spectra": source, "real_fraction": real_fraction,
              "shape": f"{r.shape[0]}x{r.shape[1]}", "eq4_loss": r.loss, "safe": r.safety.safe,
              "max_gain": r.safety.envelope.max_value, "min_value": r.safety.min_signed,
              "start": r.start, "seconds": r.seconds} for r in results]
  return paths, rows


def _polar_factor(x: np.ndarray) -> np.ndarray:
  u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return u @ vt


def _kernel_error(x: np.ndarray, coeffs: np.ndarray, normalization: str, ns_steps: int) -> float:
  """``||NS(x) - U V^T||_F / ||U V^T||_F`` with the float32 `root_optax.newton_schulz`."""
  out = root_optax.newton_schulz(jnp.asarray(x, jnp.float32),
                                 polynomials.steps_schedule(coeffs, ns_steps),
                                 normalization=normalization)
  polar = _polar_factor(x)
  return float(np.linalg.norm(np.asarray(out, np.float64) - polar) / np.linalg.norm(polar))


def polar_errors(config, result: dict, tables: dict) -> list[dict]:
  """Relative errors to the polar factor of one seed's recorded Newton-Schulz inputs.

  Per shape and coefficient set: the mean over the recorded matrices of
  ``sqrt(orthogonalization_error)`` (the error in exact arithmetic, from the
  singular values) for the early and the whole-run recordings, and the float32
  kernel's error on the inputs kept at ``early_steps`` and at the last step.
  """
  ns_steps, norm = config.calibration.ns_steps, config.calibration.normalization
  sets = {MUON: root_optax.load_coefficients("muon"),
          **{n: root_optax.load_coefficients(p) for n, p in tables.items()}}
  seed, rows = result["summary"]["seed"], []
  recorded = {source: r.spectra for source, r in result["spectra"].items()}
  for key in sorted(recorded[ALL]):
    for name, table in sets.items():
      coeffs = table.lookup(key)[0]
      row = {"seed": seed, "shape": f"{key[0]}x{key[1]}", "coefficients": name}
      for source in (EARLY, ALL):
        row[f"exact_{source}"] = float(np.mean([
            np.sqrt(spectra_lib.orthogonalization_error(coeffs, s, ns_steps, norm))
            for s in recorded[source][key]]))
      for step, inputs in sorted(result["matrices"].items()):
        row[f"f32_step{step}"] = float(np.mean([
            _kernel_error(x, coeffs, norm, ns_steps) for x in inputs
            if coefficients_lib.shape_key(x.shape) == key]))
      rows.append(row)
  return rows


def _refined_jobs(config, tables_by_seed: dict):
  """``config`` with one run per (variant, seed) table, and its (run, seed) jobs."""
  refined = copy.deepcopy(config)
  base = config.runs[0]
  pairs = [(name, seed, path) for name, *_ in config.variants
           for seed, tables in tables_by_seed.items() for path in [tables[name]]]
  refined.only = ""
  refined.runs = tuple(
      make_run(f"{name} (seed {seed})", base.optimizer, base.lr, family=name,
               root=dict(base.root.to_dict(), ns_coeffs=str(path)))
      for name, seed, path in pairs)
  return refined, [(i, seed) for i, (_, seed, _) in enumerate(pairs)]


def _mean_rows(rows: list[dict], keys, value_prefixes) -> list[dict]:
  """The mean over seeds of the columns starting with ``value_prefixes``, per ``keys``."""
  groups: dict = {}
  for r in rows:
    groups.setdefault(tuple(r[k] for k in keys), []).append(r)
  out = []
  for group, members in groups.items():
    row = dict(zip(keys, group))
    for column in members[0]:
      if column.startswith(value_prefixes):
        row[column] = float(np.mean([m[column] for m in members]))
    out.append(row)
  return out


def _formatted_fit(row: dict) -> dict:
  return dict(row, eq4_loss=f"{row['eq4_loss']:.2e}", max_gain=f"{row['max_gain']:.3f}",
              min_value=f"{row['min_value']:.3f}")


def report(config, summaries, fits, polar, out: pathlib.Path) -> str:
  """Prints the tables and writes them to ``table.md``."""
  seeds = sorted({s["seed"] for s in summaries})
  names = [config.baseline] + [v[0] for v in config.variants]
  by_run = {(s["run"], s["seed"]): s["final_val"] for s in summaries}
  per_seed = [{"seed": seed, **{n: by_run[(n, seed)] for n in names}} for seed in seeds]
  polar_columns = [c for c in polar[0] if c.startswith(("exact_", "f32_"))]
  lines = [
      f"## {config.title}", "",
      f"{config.steps} steps; mean ± std over {stats.seeds_phrase(seeds)}; losses in nats/byte "
      f"(val: {config.eval_batches} held-out batches). Coefficients fitted by "
      f"`root_optax.calibrate(**{dict(config.calibration)})` on Newton-Schulz inputs "
      f"recorded every {config.record_every} steps of the baseline run ('early': steps <= "
      f"{config.early_steps}; 'all': the whole run), and trained from step 1. Δ: paired "
      f"difference from {config.baseline} (same seed), mean ± SE; `*`: |Δ| > 2 SE.", "",
      stats.format_aggregate(stats.aggregate_runs(summaries, config.baseline), config.baseline),
      "", "### Final validation loss per seed", "",
      stats.format_table(per_seed, ["seed"] + names),
      "", "### Fits: Eq. 4 objective on the calibration spectra, safety on [0, 1]", "",
      stats.format_table([_formatted_fit(r) for r in fits],
                         ["seed", "variant", "shape", "eq4_loss", "safe", "max_gain", "min_value",
                          "start"]),
      "", "### Relative error to the polar factor of the recorded inputs (mean over seeds)", "",
      "exact_*: from the singular values of every recorded input (early / whole run); "
      "f32_step*: the float32 kernel on the inputs of that step.", "",
      stats.format_table(_mean_rows(polar, ("shape", "coefficients"), ("exact_", "f32_")),
                         ["shape", "coefficients"] + polar_columns),
  ]
  text = "\n".join(lines) + "\n"
  print("\n" + text)
  (out / "table.md").write_text(text)
  return text


def refine_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains the baseline, fits the refined tables, trains them; writes to ``workdir``.

  Returns:
    One summary dict per (run, seed); the variants' ``run`` is the variant name.
  """
  single_threaded = runtime.single_threaded_xla(pin=int(config.workers) <= 0)
  if not single_threaded:
    print("warning: XLA started before single_threaded_xla; losses may differ in the last bits")
  if not 0 < config.early_steps <= config.steps:
    raise ValueError(f"early_steps must be in [1, steps], got {config.early_steps}")
  out = runtime.make_workdir(workdir)
  seeds = [int(s) for s in config.seeds]
  runs = runtime.selected_runs(config)
  baseline = train.run_jobs(config, runs, [(0, s) for s in seeds], train=train_and_record)
  tables, fits, polar = {}, [], []
  for result in baseline:
    seed = result["summary"]["seed"]
    for name, recorder in result["spectra"].items():
      recorder.save(str(out / f"spectra_seed{seed}_{name}.npz"))
    tables[seed], rows = fit_variants(config, result["spectra"], seed, out)
    fits += rows
    polar += polar_errors(config, result, tables[seed])
  refined_config, jobs = _refined_jobs(config, tables)
  refined = train.run_jobs(refined_config, list(refined_config.runs), jobs)
  for r in refined:
    r["summary"]["run"] = r["summary"]["family"]
    for row in r["history"]:
      row["run"] = r["summary"]["run"]
  results = baseline + refined
  summaries = [r["summary"] for r in results]
  runtime.write_csv(out / "summary.csv", summaries)
  runtime.write_csv(out / "curves.csv", [row for r in results for row in r["history"]])
  runtime.write_csv(out / "fits.csv", fits)
  runtime.write_csv(out / "polar.csv", polar)
  report(config, summaries, fits, polar, out)
  print(f"wrote {out}/: summary.csv, curves.csv, fits.csv, polar.csv, table.md, "
        "spectra_seed*.npz, coefficients_seed*.json")
  return summaries


if __name__ == "__main__":  # the flags are defined only when run as a program
  app.run(runtime.make_main("lm_refine.py", refine_and_evaluate))
