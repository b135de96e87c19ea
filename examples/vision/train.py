r"""Tiny ViT on scikit-learn's digits (Flax linen + TrainState): Muon vs ROOT.

The analogue of the paper's Table 3 (ViT on CIFAR-10): the same tiny vision
transformer is trained with `optax.contrib.muon`, `optax.adamw` and `root()` at
several outlier quantiles, over several seeds (each seed fixes the
initialisation and the batch order, shared by all optimizers), and the test
accuracy is reported as mean and standard deviation. Writes ``curves.csv``,
``summary.csv`` and ``vision.png`` to ``--workdir``.

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


def train_seed(config, run, tx, model, split, seed: int) -> tuple[list[dict], float]:
  """Trains one (optimizer, seed) pair; returns per-epoch rows and the step time."""
  x_tr, y_tr, x_te, y_te = split
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
    test_loss, test_acc = evaluate(state, x_te, y_te)
    rows.append({"run": run.name, "seed": seed, "epoch": epoch,
                 "train_loss": float(np.mean(losses)), "test_loss": float(test_loss),
                 "test_acc": float(test_acc)})
  return rows, float(np.median(times[1:]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Trains every run over every seed; writes outputs; returns one row per run."""
  out = runtime.make_workdir(workdir)
  split = data.digits_split()
  model = models.ViT(**config.model.to_dict())
  steps = config.epochs * (len(split[0]) // config.batch_size)
  print(f"digits: {len(split[0])} train / {len(split[2])} test images; {steps} steps per run")
  curves, summaries = [], []
  no_bars = not runtime.progress_enabled()  # no bar fragments in logs
  for run in tqdm(runtime.selected_runs(config), desc=config.name, dynamic_ncols=True, disable=no_bars):
    tx = optimizers.make_optimizer(run, config.optim, steps)  # one tx: compiled once per run
    finals, step_times = [], []
    for seed in tqdm(range(config.seeds), desc=run.name, leave=False, dynamic_ncols=True,
                     disable=no_bars):
      rows, step_time = train_seed(config, run, tx, model, split, seed)
      curves += rows
      finals.append(rows[-1])
      step_times.append(step_time)
    acc = np.array([r["test_acc"] for r in finals])
    summaries.append({
        "run": run.name, "lr": run.lr, "seeds": config.seeds,
        "acc_mean": 100 * float(acc.mean()), "acc_std": 100 * float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        "acc_min": 100 * float(acc.min()), "acc_max": 100 * float(acc.max()),
        "test_loss": float(np.mean([r["test_loss"] for r in finals])),
        "ms_per_step": 1e3 * float(np.median(step_times))})
    tqdm.write(f"{run.name}: test acc {summaries[-1]['acc_mean']:.2f} "
               f"+- {summaries[-1]['acc_std']:.2f} %")
  runtime.write_csv(out / "curves.csv", curves)
  runtime.write_csv(out / "summary.csv", summaries)
  plot(curves, summaries, config, out / "vision.png")
  print(f"\n{config.title} ({config.seeds} seeds; accuracy in %, std over seeds)\n")
  print(stats.format_table(summaries, ["run", "lr", "acc_mean", "acc_std", "acc_min",
                                        "acc_max", "test_loss", "ms_per_step"]))
  print(f"\nwrote {out}/curves.csv, summary.csv, vision.png")
  return summaries


def plot(curves: list[dict], summaries: list[dict], config, path: pathlib.Path) -> None:
  """Mean test accuracy per epoch (band: min-max over seeds) and final bars."""
  plt = runtime.pyplot()
  fig, (ax_curve, ax_bar) = plt.subplots(1, 2, figsize=(11, 4))
  for s in summaries:
    acc = np.array([[r["test_acc"] for r in curves if r["run"] == s["run"] and r["seed"] == seed]
                    for seed in range(config.seeds)]) * 100
    epochs = np.arange(1, acc.shape[1] + 1)
    ax_curve.plot(epochs, acc.mean(0), label=s["run"])
    ax_curve.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.15)
  ax_curve.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy (mean, min-max)")
  ax_curve.set_ylim(max(0, min(s["acc_min"] for s in summaries) - 10), 100)
  ax_curve.grid(alpha=0.3)
  ax_curve.legend(fontsize=8)
  names = [s["run"] for s in summaries]
  ax_bar.bar(names, [s["acc_mean"] for s in summaries], yerr=[s["acc_std"] for s in summaries],
             capsize=4, color="tab:blue", alpha=0.8)
  ax_bar.set_ylim(min(s["acc_min"] for s in summaries) - 2, 100)
  ax_bar.set(ylabel="final test accuracy (%)", title=f"mean +- std over {config.seeds} seeds")
  ax_bar.tick_params(axis="x", labelrotation=20, labelsize=8)
  fig.suptitle(config.title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
