r"""Tiny ViT on scikit-learn's digits (Flax linen + TrainState): Muon vs ROOT.

The analogue of the paper's Table 3 (ViT on CIFAR-10): the same tiny vision
transformer is trained with `optax.contrib.muon`, `optax.adamw`, `root()`'s
default and `root(variant="paper")` at several outlier quantiles, over the
seeds in ``config.seeds`` (each seed fixes the initialisation and the batch
order, shared by all optimizers, so runs are paired by seed). Each run is
scored on ``config.evaluate_on``: the validation split when choosing rates,
the test split for the result. The accuracy is reported as mean and standard
deviation over seeds, and each run's paired difference from
``config.baseline`` as mean and standard error. Writes ``curves.csv``,
``summary.csv``, ``table.md`` and ``vision.png`` to ``--workdir``.

The command line is `examples/vision/main.py`.
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm

from examples.common import data
from examples.common import models
from examples.common import optimizers
from examples.common import runtime
from examples.common import stats

def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.jit(static_argnums=0)
def _init(model, key, images):
  return model.init(key, images)


@jax.jit
def train_step(state: train_state.TrainState, images, labels):
  """One optimizer step; returns the new state and the batch loss."""
  def loss_fn(params):
    return cross_entropy(state.apply_fn({"params": params}, images), labels)
  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


@jax.jit
def evaluate(state: train_state.TrainState, images, labels):
  """Test loss and accuracy."""
  logits = state.apply_fn({"params": state.params}, images)
  return cross_entropy(logits, labels), jnp.mean(jnp.argmax(logits, -1) == labels)


def eval_split(config, split: data.DigitsSplit) -> tuple[np.ndarray, np.ndarray]:
  """The images a run is scored on: ``config.evaluate_on`` is 'validation' or 'test'."""
  if config.evaluate_on == "validation":
    return split.x_val, split.y_val
  if config.evaluate_on == "test":
    return split.x_test, split.y_test
  raise ValueError(f"evaluate_on must be 'validation' or 'test', got {config.evaluate_on!r}")


def train_seed(config, run, tx, model, split, seed: int) -> tuple[list[dict], float]:
  """Trains one (optimizer, seed) pair; returns per-epoch rows and the step time."""
  x_tr, y_tr = split.x_train, split.y_train
  x_ev, y_ev = eval_split(config, split)
  params = _init(model, jax.random.key(seed), x_tr[:1])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  rng = np.random.default_rng(seed)
  rows, times = [], []
  for epoch in range(1, config.epochs + 1):
    losses = []
    for idx in data.epoch_batches(len(x_tr), config.batch_size, rng):
      t0 = time.perf_counter()
      state, loss = train_step(state, x_tr[idx], y_tr[idx])
      losses.append(float(loss))
      times.append(time.perf_counter() - t0)
    eval_loss, eval_acc = evaluate(state, x_ev, y_ev)
    rows.append({"run": run.name, "family": run.get("family", run.name), "lr": run.lr,
                 "seed": seed, "epoch": epoch, "train_loss": float(np.mean(losses)),
                 "eval_loss": float(eval_loss), "eval_acc": float(eval_acc)})
  return rows, float(np.median(times[1:]))


def summarize(run, finals: list[dict], step_times: list[float]) -> dict:
  """One run's accuracy (%) and loss over seeds, with the per-seed values kept for pairing."""
  acc = stats.seed_stats([100 * r["eval_acc"] for r in finals])
  accs = [100 * r["eval_acc"] for r in finals]
  return {"run": run.name, "family": run.get("family", run.name), "lr": run.lr,
          "seeds": len(finals), "acc_mean": acc["mean"], "acc_std": acc["std"],
          "acc_min": min(accs), "acc_max": max(accs),
          "eval_loss": float(np.mean([r["eval_loss"] for r in finals])),
          "ms_per_step": 1e3 * float(np.median(step_times)),
          "acc_by_seed": {r["seed"]: 100 * r["eval_acc"] for r in finals},
          "loss_by_seed": {r["seed"]: r["eval_loss"] for r in finals}}


def add_paired_differences(summaries: list[dict], baseline: str) -> None:
  """Adds each run's paired Δ accuracy and Δ loss vs the run named ``baseline``."""
  base = next((s for s in summaries if s["run"] == baseline), None)
  for s in summaries:
    if base is None or s is base:
      continue
    for key in ("acc", "loss"):
      d = stats.paired_difference(s[f"{key}_by_seed"], base[f"{key}_by_seed"])
      s[f"d_{key}"] = stats.fmt_diff(d["mean"], d["se"], d["significant"], 2 if key == "acc" else 4)


def best_rates(summaries: list[dict]) -> list[dict]:
  """Per family, the run with the best mean accuracy (ties: lower loss)."""
  best: dict = {}
  for s in summaries:
    key = (s["acc_mean"], -s["eval_loss"])
    if s["family"] not in best or key > best[s["family"]][0]:
      best[s["family"]] = (key, s)
  return [s for _, s in best.values()]


def format_summary(summaries: list[dict], config) -> str:
  """The Markdown table: accuracy mean ± std, paired Δ vs the baseline ± SE."""
  split = config.evaluate_on
  columns = ["run", "peak lr", f"{split} accuracy %", "min", "max", f"{split} loss",
             f"Δ acc vs {config.baseline}", f"Δ loss vs {config.baseline}", "ms / step"]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for s in summaries:
    cells = [s["run"], f"{s['lr']:g}", stats.fmt_mean_std(s["acc_mean"], s["acc_std"], 2),
             f"{s['acc_min']:.2f}", f"{s['acc_max']:.2f}", f"{s['eval_loss']:.4f}",
             s.get("d_acc", "(baseline)" if s["run"] == config.baseline else "—"),
             s.get("d_loss", "(baseline)" if s["run"] == config.baseline else "—"),
             f"{s['ms_per_step']:.1f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains every run over every seed; writes outputs; returns one row per run."""
  out = runtime.make_workdir(workdir)
  seeds = [int(s) for s in config.seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.seeds must be distinct seeds, got {config.seeds}")
  split = data.digits_split()
  model = models.ViT(**config.model.to_dict())
  steps = config.epochs * (len(split.x_train) // config.batch_size)
  print(f"digits: {len(split.x_train)} train / {len(split.x_val)} validation / "
        f"{len(split.x_test)} test images; scored on {config.evaluate_on}; "
        f"{steps} steps per run; {stats.seeds_phrase(seeds)}")
  curves, summaries = [], []
  no_bars = not runtime.progress_enabled()  # no bar fragments in logs
  for run in tqdm(runtime.selected_runs(config), desc=config.name, dynamic_ncols=True, disable=no_bars):
    tx = optimizers.make_optimizer(run, config.optim, steps)  # one tx: compiled once per run
    finals, step_times = [], []
    for seed in tqdm(seeds, desc=run.name, leave=False, dynamic_ncols=True, disable=no_bars):
      rows, step_time = train_seed(config, run, tx, model, split, seed)
      curves += rows
      finals.append(rows[-1])
      step_times.append(step_time)
    summaries.append(summarize(run, finals, step_times))
    tqdm.write(f"{run.name}: {config.evaluate_on} acc "
               f"{stats.fmt_mean_std(summaries[-1]['acc_mean'], summaries[-1]['acc_std'], 2)} %")
  add_paired_differences(summaries, config.baseline)
  table = format_summary(summaries, config)
  runtime.write_csv(out / "curves.csv", curves)
  runtime.write_csv(out / "summary.csv", [
      {k: v for k, v in s.items() if not k.endswith("_by_seed")} for s in summaries])
  plot(curves, summaries, config, seeds, out / "vision.png")
  print(f"\n{config.title}: {config.evaluate_on} accuracy (%), mean ± std over "
        f"{stats.seeds_phrase(seeds)}; Δ: paired by seed, mean ± SE, * where |Δ| > 2 SE\n")
  print(table)
  if len({s["family"] for s in summaries}) < len(summaries):
    print(f"\nbest rate per family on {config.evaluate_on} (ties: lower loss):")
    for s in best_rates(summaries):
      print(f"  {s['family']}: lr={s['lr']:g} ({s['acc_mean']:.2f} %)")
  (out / "table.md").write_text(table + "\n")
  print(f"\nwrote {out}/curves.csv, summary.csv, table.md, vision.png")
  return summaries


def plot(curves: list[dict], summaries: list[dict], config, seeds: list[int],
         path: pathlib.Path) -> None:
  """Mean test accuracy per epoch (band: min-max over seeds) and final bars."""
  plt = runtime.pyplot()
  fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
  for s in summaries:
    acc = np.array([[r["eval_acc"] for r in curves if r["run"] == s["run"] and r["seed"] == seed]
                    for seed in seeds]) * 100
    epochs = np.arange(1, acc.shape[1] + 1)
    ax_curve.plot(epochs, acc.mean(0), label=s["run"])
    ax_curve.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.15)
  ax_curve.set(xlabel="epoch", ylabel=f"{config.evaluate_on} accuracy (%)",
               title=f"{config.evaluate_on} accuracy (mean, min-max)")
  ax_curve.set_ylim(max(0, min(s["acc_min"] for s in summaries) - 10), 100)
  ax_curve.grid(alpha=0.3)
  ax_curve.legend(fontsize=8)
  names = [s["run"] for s in summaries]
  ax_bar.bar(names, [s["acc_mean"] for s in summaries], yerr=[s["acc_std"] for s in summaries],
             capsize=4, color="tab:blue", alpha=0.8)
  ax_bar.set_ylim(min(s["acc_min"] for s in summaries) - 2, 100)
  ax_bar.set(ylabel=f"final {config.evaluate_on} accuracy (%)",
             title=f"mean ± std over {len(seeds)} seeds")
  ax_bar.tick_params(axis="x", labelrotation=20, labelsize=8)
  fig.suptitle(config.title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
