r"""Byte-level transformer LM on the Python standard library: ROOT vs Muon vs AdamW.

Trains the same small decoder-only transformer (Flax NNX) for the same number
of steps, once per optimizer in the config and per seed in ``config.seeds``.
Seed s fixes the initialisation, the batch order and the gradient corruption
of every run, so the runs are paired by seed. Prints (and writes to
``table.md``) per run the mean ± std over seeds of the final train /
validation losses and step times, and each run's paired difference from
``config.baseline`` (mean ± standard error over seeds, ``*`` when it exceeds
two standard errors). Also writes ``curves.csv``, ``summary.csv`` (one row per
run and seed) and ``curves.png`` (plus ``quantile.png`` or ``robustness.png``
for those experiments, and ``diagnostics.csv`` / ``diagnostics.png`` for the
ROOT runs, from `root_optax.diagnostics`) to ``--workdir``.

The (run, seed) jobs run in ``config.workers`` worker processes (default 2).
Every process that trains, a worker or this one with ``--config.workers 0``,
runs XLA single-threaded and pinned to one core (`runtime.single_threaded_xla`),
so the losses are bit-identical whatever the number of workers. The command
line is `examples/lm/main.py`.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import multiprocessing
import os
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import root_optax
from examples.common import data
from examples.common import models
from examples.common import noise as grad_noise
from examples.common import optimizers
from examples.common import runtime
from examples.common import stats

def loss_fn(model: models.Transformer, batch: jax.Array) -> jax.Array:
  """Mean next-byte cross-entropy in nats."""
  logits = model(batch[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch[:, 1:]).mean()


def make_train_step(noise: ml_collections.ConfigDict):
  """A jitted step; ``noise`` corrupts the gradients the optimizer sees."""
  @nnx.jit
  def train_step(model, optimizer, batch, key):
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    grads = grad_noise.inject_noise(grads, key, noise)
    optimizer.update(model, grads)
    return loss
  return train_step


@nnx.jit
def eval_step(model, batch):
  return loss_fn(model, batch)


def evaluate(model, eval_set: jax.Array) -> float:
  return float(np.mean([eval_step(model, b) for b in eval_set]))


def _run_noise(config, run) -> ml_collections.ConfigDict:
  noise = ml_collections.ConfigDict(config.noise.to_dict())
  noise.kind = run.get("noise", noise.kind)
  return noise


def make_model(config, seed: int) -> models.Transformer:
  """The model initialised from ``seed``: the same weights for every run of that seed.

  ``config.model.dtype`` (optional, e.g. ``'bfloat16'``) is the compute dtype;
  the parameters, their gradients and the optimizer state stay float32.
  """
  dtype = config.model.get("dtype") or None
  return models.Transformer(data.VOCAB_SIZE, config.model.d_model, config.model.num_layers,
                            config.model.num_heads, rngs=nnx.Rngs(seed),
                            dtype=jnp.dtype(dtype) if dtype else None)


def device_line(config) -> str:
  """Where the runs trained: the devices, jax's version and the compute dtype."""
  dtype = config.model.get("dtype") or "float32"
  return (f"Device: {jax.device_count()} x {jax.devices()[0].device_kind} "
          f"({jax.default_backend()}), jax {jax.__version__}; compute dtype {dtype}, "
          "parameters and optimizer state float32.")


# Per process: the data, and one optimizer and jitted step per run, reused over
# that run's seeds (the same transformation object: compiled once).
_CACHE: dict = {}


def _data(config):
  key = ("data", config.data.to_json(), config.eval_batches, config.batch_size, config.seq_len)
  if key not in _CACHE:
    corpus = data.stdlib_corpus(config.data.val_every, config.data.max_train_bytes,
                                config.data.max_val_bytes)
    eval_set = jnp.asarray(data.lm_eval_batches(
        corpus.val, config.eval_batches, config.batch_size, config.seq_len))
    _CACHE[key] = corpus, eval_set
  return _CACHE[key]


def _step_and_tx(config, run):
  key = ("run", run.to_json(), config.optim.to_json(), config.steps,
         _run_noise(config, run).to_json())
  if key not in _CACHE:
    _CACHE[key] = (optimizers.make_optimizer(run, config.optim, config.steps),
                   make_train_step(_run_noise(config, run)))
  return _CACHE[key]


def train_one(config, run, seed: int, progress: bool = False,
              on_step: Callable[[int, nnx.Optimizer], None] | None = None) -> dict:
  """Trains ``run`` from seed ``seed``'s initialisation, batches and noise.

  Args:
    config: The experiment config (model, data, schedule).
    run: One entry of ``config.runs``.
    seed: Seed of the initialisation, the batch order and the noise.
    progress: Show a progress bar.
    on_step: Called as ``on_step(step, optimizer)`` after every step (outside
      the timed step), e.g. to read the optimizer state; it must not change it.

  Returns:
    ``history`` (one row per step), ``summary`` (final losses, timings) and
    ``diagnostics`` (ROOT runs, `root_optax.diagnostics`: one row per
    logged key every ``eval_every`` steps).
  """
  corpus, eval_set = _data(config)
  # A fresh model each run: `optimizer.update` changes the model's variables in
  # place, so reusing one (or `nnx.merge` of one state) would warm-start later runs.
  model = make_model(config, seed)
  tx, train_step = _step_and_tx(config, run)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  batches = data.lm_batches(corpus.train, config.batch_size, config.seq_len, seed)
  key = grad_noise.noise_key(seed)
  diagnose = root_optax.diagnostics if run.optimizer == optimizers.ROOT else None
  history, diagnostics, losses, times, cpu_times = [], [], [], [], []
  start = time.perf_counter()
  bar = tqdm(range(1, config.steps + 1), desc=f"{run.name} seed {seed}", leave=False,
             dynamic_ncols=True, disable=not progress)
  for step in bar:
    t0, c0 = time.perf_counter(), time.process_time()
    loss = float(train_step(model, optimizer, jnp.asarray(next(batches)),
                            grad_noise.step_noise_key(key, step)))
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
    losses.append(loss)
    if on_step is not None:
      on_step(step, optimizer)
    row = {"run": run.name, "seed": seed, "step": step, "train_loss": loss}
    if step % config.eval_every == 0 or step == config.steps:
      row["val_loss"] = evaluate(model, eval_set)
      bar.set_postfix(train=f"{loss:.3f}", val=f"{row['val_loss']:.3f}")
      if diagnose is not None:
        figures = diagnose(optimizer.opt_state)
        if not figures:  # e.g. ROOT with every outlier stage off: nothing to log
          diagnose = None
        diagnostics += [{"run": run.name, "seed": seed, "step": step, "key": k, "value": float(v)}
                        for k, v in figures.items()]
    history.append(row)
  bar.close()
  noise = _run_noise(config, run)
  summary = {
      "run": run.name,
      "seed": seed,
      "family": run.get("family", run.name),
      "optimizer": run.optimizer,
      "lr": run.lr,
      "noise": noise.kind,
      "final_train": float(np.mean(losses[-config.train_loss_window:])),
      "final_val": history[-1]["val_loss"],
      # Step 1 compiles (on a run's first seed in a process); the step time is
      # the median of the later steps, and undefined for a 1-step run.
      "ms_per_step": 1e3 * float(np.median(times[1:])) if len(times) > 1 else math.nan,
      # CPU time of this process per step (all its threads): in a single-threaded
      # worker, what the step costs on an idle core, even on a busy machine.
      "cpu_ms_per_step": 1e3 * float(np.median(cpu_times[1:])) if len(times) > 1 else math.nan,
      "first_step_s": times[0],
      "wall_s": time.perf_counter() - start,
  }
  if noise.kind == "bursts":
    summary["burst_steps"] = len(grad_noise.burst_steps(key, config.steps, noise.burst_prob))
  if run.optimizer == optimizers.ROOT:
    summary["root_kwargs"] = json.dumps(dict(run.get("root", {})), sort_keys=True)
  return {"history": history, "summary": summary, "diagnostics": diagnostics}


def _init_worker(counter, cores) -> None:
  """Pins worker i to core ``cores[i % len(cores)]``: every process sees one
  core, so XLA's thread pools, and the losses, are the same in each."""
  with counter.get_lock():
    index = counter.value
    counter.value += 1
  if cores and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {cores[index % len(cores)]})


def _worker_task(config, jobs: list[tuple[int, int]], train: Callable = train_one) -> list[dict]:
  runs = runtime.selected_runs(config)
  return [train(config, runs[r], seed) for r, seed in jobs]


def _line(result: dict, done: int, total: int) -> str:
  s = result["summary"]
  return (f"[{done}/{total}] {s['run']} seed {s['seed']}: train {s['final_train']:.4f}  "
          f"val {s['final_val']:.4f}  {s['ms_per_step']:.1f} ms/step  ({s['wall_s']:.0f} s)")


def run_jobs(config, runs, jobs: list[tuple[int, int]], train: Callable = train_one) -> list[dict]:
  """Trains every (run index, seed) job; returns the results in job order.

  ``runs`` are ``runtime.selected_runs(config)``. ``train`` is called as
  ``train(config, run, seed, progress=...)`` and returns what `train_one`
  does (it may add keys); with workers it must be a module-level function.
  """
  workers = min(int(config.workers), len(jobs))
  results: list = [None] * len(jobs)
  if workers <= 0:
    for i, (r, seed) in enumerate(jobs):
      results[i] = train(config, runs[r], seed, progress=runtime.progress_enabled())
      print(_line(results[i], i + 1, len(jobs)), flush=True)
    return results
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  ctx = multiprocessing.get_context("spawn")  # fresh processes: JAX is not fork-safe
  print(f"{len(jobs)} jobs on {workers} single-threaded worker process"
        f"{'es' if workers > 1 else ''}"
        + (f" pinned to cores {[cores[i % len(cores)] for i in range(workers)]}" if cores else ""),
        flush=True)
  # The workers inherit the environment when they start, XLA_FLAGS included
  # (`runtime.single_threaded_xla`), and read it at their first JAX computation.
  with runtime.environ(OMP_NUM_THREADS="1"), \
      concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=ctx, initializer=_init_worker,
          initargs=(ctx.Value("i", 0), cores)) as pool:
    index = {job: i for i, job in enumerate(jobs)}
    futures = {pool.submit(_worker_task, config, task, train): task
               for task in runtime.worker_tasks(jobs, workers)}
    done = 0
    for future in concurrent.futures.as_completed(futures):
      for job, result in zip(futures[future], future.result()):
        done += 1
        results[index[job]] = result
        print(_line(result, done, len(jobs)), flush=True)
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every run of ``config`` for every seed and writes the outputs to ``workdir``.

  Returns:
    One summary dict per (run, seed) (see `train_one`), run-major.
  """
  # Before the first JAX computation; the workers inherit the flags and pin
  # themselves, and without workers this process runs on one core.
  # ``config.single_threaded=False`` (an accelerator run) leaves XLA's threading alone.
  single_threaded = (runtime.single_threaded_xla(pin=int(config.workers) <= 0)
                     if config.get("single_threaded", True) else False)
  out = runtime.make_workdir(workdir)
  seeds = [int(s) for s in config.seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds must be distinct seeds, got {config.seeds}")
  corpus, _ = _data(config)
  model = make_model(config, seeds[0])
  print(f"corpus: {len(corpus.train_files)} train files ({len(corpus.train):,} bytes), "
        f"{len(corpus.val_files)} val files ({len(corpus.val):,} bytes); "
        f"model: {sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))):,} params; "
        f"{stats.seeds_phrase(seeds)}", flush=True)
  runs = runtime.selected_runs(config)
  results = run_jobs(config, runs, [(r, s) for r in range(len(runs)) for s in seeds])
  summaries = [r["summary"] for r in results]
  runtime.write_csv(out / "curves.csv", [row for r in results for row in r["history"]])
  runtime.write_csv(out / "summary.csv", summaries)
  diagnostics = [row for r in results for row in r["diagnostics"]]
  written = ["curves.csv", "summary.csv", "table.md", "curves.png"]
  if diagnostics:
    runtime.write_csv(out / "diagnostics.csv", diagnostics)
    plot_diagnostics(diagnostics, seeds[0], config, out / "diagnostics.png")
    written += ["diagnostics.csv", "diagnostics.png"]
  plot_curves(results, runs, config, out / "curves.png")
  report(config, summaries, out, written, single_threaded)
  if config.get("gap_steps") and config.get("baseline"):
    report_gaps(config, results, out)
  return summaries


def report_gaps(config, results: list[dict], out: pathlib.Path) -> None:
  """Appends to ``table.md`` (and prints) the paired gap vs the baseline at ``config.gap_steps``."""
  rows = [dict(row, family=r["summary"]["family"], noise=r["summary"]["noise"])
          for r in results for row in r["history"]]
  steps = [s for s in config.gap_steps if s <= config.steps]
  text = "\n".join(["", f"### Gap to {config.baseline} over the run", "",
                    "Paired Δ validation loss (same seed and noise), mean ± SE; `*`: > 2 SE.", "",
                    stats.gaps_over_steps(rows, config.baseline, steps), ""])
  print(text)
  with open(out / "table.md", "a") as f:
    f.write(text)


def plot_curves(results: list[dict], runs, config, path: pathlib.Path) -> None:
  """Smoothed train loss and validation loss against step: mean over seeds
  (band: ± one std), one line per run."""
  plt = runtime.pyplot()
  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  for run in runs:
    mine = [r["history"] for r in results if r["summary"]["run"] == run.name]
    steps = np.array([row["step"] for row in mine[0]])
    train = np.array([runtime.smooth([row["train_loss"] for row in h], config.train_loss_window)
                      for h in mine])
    val_steps = [row["step"] for row in mine[0] if "val_loss" in row]
    val = np.array([[row["val_loss"] for row in h if "val_loss" in row] for h in mine])
    for ax, x, y in ((ax_train, steps, train), (ax_val, val_steps, val)):
      line, = ax.plot(x, y.mean(0), label=run.name, marker="o" if ax is ax_val else None,
                      markersize=3)
      if len(y) > 1:
        ax.fill_between(x, y.mean(0) - y.std(0, ddof=1), y.mean(0) + y.std(0, ddof=1),
                        color=line.get_color(), alpha=0.15, linewidth=0)
  n = len(config.seeds)
  for ax, title in ((ax_train, f"train loss (moving avg, {config.train_loss_window} steps)"),
                    (ax_val, "validation loss (held-out files)")):
    ax.set(xlabel="step", ylabel="nats / byte", title=f"{title}; mean ± std, {n} seeds")
    ax.grid(alpha=0.3)
  # Zoom on the end of training: from the best final loss to the worst loss
  # after the first 10% of steps.
  for ax in (ax_train, ax_val):
    ys = [(line.get_xdata(), line.get_ydata()) for line in ax.get_lines()]
    low = min(float(np.nanmin(y)) for _, y in ys)
    high = max(float(np.nanmax(np.where(np.asarray(x) >= 0.1 * config.steps, y, np.nan)))
               for x, y in ys)
    ax.set_ylim(low - 0.05, high + 0.05)
  ax_val.legend(fontsize=8)
  fig.suptitle(config.title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_diagnostics(rows: list[dict], seed: int, config, path: pathlib.Path) -> None:
  """ROOT's clipped fraction and bursts caught against step, per shape group (one seed)."""
  plt = runtime.pyplot()
  panels = (("clipped fraction", lambda k: k.endswith("/clipped_fraction")),
            ("bursts caught (cumulative)", lambda k: k.startswith("bursts/") and k.endswith("/caught")))
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, (title, wanted) in zip(axes, panels):
    series: dict = {}
    for r in rows:
      if r["seed"] == seed and wanted(r["key"]):
        series.setdefault((r["run"], r["key"].rsplit("/", 1)[0]), []).append((r["step"], r["value"]))
    for (run, group), points in series.items():
      ax.plot(*zip(*sorted(points)), marker="o", markersize=3, label=f"{run}: {group}")
    ax.set(xlabel="step", title=f"{title} (seed {seed})")
    ax.grid(alpha=0.3)
    if series:
      ax.legend(fontsize=6)
    else:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
  fig.suptitle(f"{config.title}: ROOT diagnostics")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(config, summaries: list[dict], out: pathlib.Path, written=(),
           single_threaded: bool = True) -> str:
  """Prints the seeded summary table (and the experiment's own table and plot);
  writes the same text to ``table.md``."""
  seeds = sorted({s["seed"] for s in summaries})
  baseline = config.get("baseline", "")
  agg = stats.aggregate_runs(summaries, baseline)
  workers = min(int(config.workers), len(summaries))
  # Not "side by side": a worker whose partner has finished steps alone, and faster.
  where = (f"{workers} single-threaded worker processes, one per core (a step is slower "
           "while another worker trains than alone, so runs compare only roughly)"
           if workers > 1 else "1 single-threaded worker process" if workers == 1
           else "this process, " + ("single-threaded on one core" if single_threaded
                                    else "with the XLA threading it started with"))
  lines = [f"## {config.title}", "",
           f"{config.steps} steps; mean ± std over {stats.seeds_phrase(seeds)}. Seed s fixes "
           "the initialisation, the batch order and the gradient noise of every run. Losses "
           "in nats/byte (train: mean of the last "
           f"{config.train_loss_window} steps' batch losses; val: {config.eval_batches} fixed "
           "held-out batches, always clean data). ms / step: median step time after the "
           f"first (compiling) step, measured in {where}.", "", device_line(config), ""]
  if any("d_final_val_mean" in r for r in agg):
    lines += [f"Δ: paired difference from {baseline} (same seed and noise), mean ± standard "
              "error (std of the per-seed differences / sqrt(n)); `*`: |Δ| > 2 SE.", ""]
  elif baseline:
    lines += [f"(No paired comparison: the baseline {baseline!r} is not among these runs.)", ""]
  lines.append(stats.format_aggregate(agg, baseline))
  root_runs = {s["run"]: s["root_kwargs"] for s in summaries if "root_kwargs" in s}
  if root_runs:
    lines += ["", "ROOT runs: `root_optax.root(lr, weight_decay, adam_b1, adam_b2, "
              "param_labels=route_by_path(...), **kwargs)` with kwargs: "
              + "; ".join(f"{name} `{kw}`" for name, kw in root_runs.items()) + "."]
  bursts = {s["seed"]: s["burst_steps"] for s in summaries if "burst_steps" in s}
  if bursts:
    lines += ["", "'bursts' steps (of " + str(config.steps) + "): "
              + ", ".join(f"seed {s}: {n}" for s, n in sorted(bursts.items())) + "."]
  if config.report == "quantile":
    _report_quantile(agg, out)
  elif config.report == "robustness":
    lines += ["", _report_robustness(summaries, baseline, out)]
  text = "\n".join(lines) + "\n"
  print("\n" + text)
  (out / "table.md").write_text(text)
  print(f"wrote {out}/: {', '.join(list(written) + [p for p in ('quantile.png', 'robustness.png') if (out / p).exists()])}")
  return text


def _report_quantile(agg, out) -> None:
  rows = [r for r in agg if r["family"].startswith("ROOT p=")]
  qs = [float(r["family"].split("=")[1]) for r in rows]
  plt = runtime.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  std = lambda r: r["final_val_std"] if math.isfinite(r["final_val_std"]) else 0.0
  ax.errorbar(qs, [r["final_val_mean"] for r in rows], yerr=[std(r) for r in rows],
              fmt="o-", capsize=3, label="ROOT")
  for r in agg:
    if r not in rows:
      ax.axhline(r["final_val_mean"], ls="--", color="gray", label=r["run"])
  ax.set(xlabel="quantile p", ylabel="final validation loss",
         title=f"ROOT quantile ablation (mean ± std, {rows[0]['n'] if rows else 0} seeds)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "quantile.png", dpi=120)
  plt.close(fig)


def _report_robustness(summaries, baseline, out) -> str:
  rows = stats.robustness_rows(summaries, baseline)
  legend = ("damage = noisy − clean final val of the same family, paired by seed: mean ± SE "
            "(`*`: > 2 SE, i.e. the noise clearly hurts).")
  if baseline:
    legend += (f" damage / {baseline}'s: ratio of mean damages at the same noise kind (only "
               f"where {baseline}'s damage exceeds 2 SE), ± its SE (delta method, paired); "
               f"damage − {baseline}'s: paired "
               "difference of the damages, mean ± SE (`*`: > 2 SE).")
  text = "\n".join(["### Robustness: final val by gradient noise", "", legend, "",
                    stats.format_robustness(rows, baseline)])
  families = list(dict.fromkeys(r["family"] for r in rows))
  kinds = [k for k in grad_noise.NOISE_KINDS if any(r["noise"] == k for r in rows)]
  cell = {(r["family"], r["noise"]): r for r in rows}
  plt = runtime.pyplot()
  fig, ax = plt.subplots(figsize=(7, 3.8))
  width = 0.8 / len(kinds)
  for i, kind in enumerate(kinds):
    got = [cell.get((f, kind)) for f in families]
    ax.bar(np.arange(len(families)) + i * width, [c["val_mean"] if c else np.nan for c in got],
           width, yerr=[c["val_std"] if c and math.isfinite(c["val_std"]) else 0.0 for c in got],
           capsize=3, label=kind)
  ax.set_xticks(np.arange(len(families)) + width * (len(kinds) - 1) / 2, families)
  vals = [r["val_mean"] for r in rows if math.isfinite(r["val_mean"])]
  ax.set_ylim(min(vals) - 0.1, max(vals) + 0.1)
  n = max(r["n"] for r in rows)
  ax.set(ylabel="final validation loss",
         title=f"robustness to gradient outliers (mean ± std, {n} seeds)")
  ax.tick_params(axis="x", labelsize=8)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "robustness.png", dpi=120)
  plt.close(fig)
  return text
