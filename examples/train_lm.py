r"""Byte-level transformer LM on the Python standard library: ROOT vs Muon vs AdamW.

Trains the same small decoder-only transformer (Flax NNX) from the same
initialisation, on the same batches, for the same number of steps, once per
optimizer in the config, and prints a table of final train / validation losses
and step times. Writes ``curves.csv``, ``summary.csv`` and ``curves.png`` (plus
``quantile.png`` or ``robustness.png`` for those experiments) to ``--workdir``.

Usage (from the repository root)::

  python examples/train_lm.py                                   # main comparison
  python examples/train_lm.py --quick                           # < 1 minute smoke run
  python examples/train_lm.py --config configs/lm_quantile.py   # paper Fig. 4 analogue
  python examples/train_lm.py --config configs/lm_outliers.py   # gradient-noise robustness
  python examples/train_lm.py --config.steps 200 --workdir /tmp/lm
"""

from __future__ import annotations

import pathlib
import sys
import time

if __package__ in (None, ""):  # `python examples/train_lm.py`: make `examples` importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app
from flax import nnx
from tqdm import tqdm

from examples import common
from examples import data
from examples import models

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
    grads = common.inject_noise(grads, key, noise)
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


def make_model(config) -> models.Transformer:
  """The model, initialised from ``config.seed``: the same weights for every run."""
  return models.Transformer(data.VOCAB_SIZE, config.model.d_model, config.model.num_layers,
                            config.model.num_heads, rngs=nnx.Rngs(config.seed))


def train_one(config, run, corpus, eval_set) -> dict:
  """Trains one run from a fresh copy of the shared initialisation."""
  # A fresh model each run: `optimizer.update` changes the model's variables in
  # place, so reusing one (or `nnx.merge` of one state) would warm-start later runs.
  model = make_model(config)
  tx = common.make_optimizer(run, config.optim, config.steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  train_step = make_train_step(_run_noise(config, run))
  batches = data.lm_batches(corpus.train, config.batch_size, config.seq_len, config.data_seed)
  noise_key = jax.random.key(config.noise_seed)
  history, losses, times = [], [], []
  start = time.perf_counter()
  bar = tqdm(range(1, config.steps + 1), desc=run.name, leave=False, dynamic_ncols=True)
  for step in bar:
    t0 = time.perf_counter()
    loss = float(train_step(model, optimizer, jnp.asarray(next(batches)),
                            jax.random.fold_in(noise_key, step)))
    times.append(time.perf_counter() - t0)
    losses.append(loss)
    row = {"run": run.name, "step": step, "train_loss": loss}
    if step % config.eval_every == 0 or step == config.steps:
      row["val_loss"] = evaluate(model, eval_set)
      bar.set_postfix(train=f"{loss:.3f}", val=f"{row['val_loss']:.3f}")
    history.append(row)
  window = losses[-config.train_loss_window:]
  summary = {
      "run": run.name,
      "optimizer": run.optimizer,
      "lr": run.lr,
      "noise": _run_noise(config, run).kind,
      "final_train": float(np.mean(window)),
      "final_val": history[-1]["val_loss"],
      # Step 1 includes compilation; the median of the rest is the step time.
      "ms_per_step": 1e3 * float(np.median(times[1:] if len(times) > 1 else times)),
      "compile_s": times[0],
      "wall_s": time.perf_counter() - start,
  }
  if run.optimizer == common.ROOT:
    summary["quantile"] = run.get("root", {}).get("quantile", 0.90)
  summary["family"] = run.get("family", run.name)
  return {"history": history, "summary": summary}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  """Runs every run of ``config`` and writes the outputs to ``workdir``.

  Returns:
    One summary dict per run (see `train_one`).
  """
  out = common.make_workdir(workdir)
  corpus = data.stdlib_corpus(config.data.val_every, config.data.max_train_bytes,
                              config.data.max_val_bytes)
  eval_set = jnp.asarray(data.lm_eval_batches(
      corpus.val, config.eval_batches, config.batch_size, config.seq_len))
  model = make_model(config)
  print(f"corpus: {len(corpus.train_files)} train files ({len(corpus.train):,} bytes), "
        f"{len(corpus.val_files)} val files ({len(corpus.val):,} bytes); "
        f"model: {sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))):,} params")
  results = []
  for run in tqdm(common.selected_runs(config), desc=config.name, dynamic_ncols=True):
    results.append(train_one(config, run, corpus, eval_set))
    s = results[-1]["summary"]
    tqdm.write(f"{s['run']}: train {s['final_train']:.4f}  val {s['final_val']:.4f}  "
               f"{s['ms_per_step']:.1f} ms/step")
  summaries = [r["summary"] for r in results]
  common.write_csv(out / "curves.csv", [row for r in results for row in r["history"]])
  common.write_csv(out / "summary.csv", summaries)
  plot_curves(results, config, out / "curves.png")
  report(config, summaries, out)
  return summaries


def plot_curves(results: list[dict], config, path: pathlib.Path) -> None:
  """Smoothed train loss and validation loss against step, one line per run."""
  plt = common.pyplot()
  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    steps = [row["step"] for row in r["history"]]
    train = common.smooth([row["train_loss"] for row in r["history"]], config.train_loss_window)
    ax_train.plot(steps, train, label=r["summary"]["run"])
    val = [(row["step"], row["val_loss"]) for row in r["history"] if "val_loss" in row]
    ax_val.plot(*zip(*val), marker="o", markersize=3, label=r["summary"]["run"])
  for ax, title in ((ax_train, f"train loss (moving avg, {config.train_loss_window} steps)"),
                    (ax_val, "validation loss (held-out files)")):
    ax.set(xlabel="step", ylabel="nats / byte", title=title)
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


def report(config, summaries: list[dict], out: pathlib.Path) -> None:
  """Prints the summary table, and the experiment-specific table and plot."""
  print(f"\n{config.title}\n")
  print(common.format_table(summaries, ["run", "lr", "final_train", "final_val", "ms_per_step"]))
  if config.report == "quantile":
    _report_quantile(summaries, out)
  elif config.report == "robustness":
    _report_robustness(summaries, out)
  print(f"\nwrote {out}/curves.csv, summary.csv, curves.png")


def _report_quantile(summaries, out) -> None:
  rows = [s for s in summaries if "quantile" in s]
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot([s["quantile"] for s in rows], [s["final_val"] for s in rows], "o-", label="ROOT")
  for s in summaries:
    if "quantile" not in s:
      ax.axhline(s["final_val"], ls="--", color="gray", label=s["run"])
  ax.set(xlabel="quantile p", ylabel="final validation loss", title="ROOT quantile ablation")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "quantile.png", dpi=120)
  plt.close(fig)


def _report_robustness(summaries, out) -> None:
  rows = common.robustness_rows(summaries)
  kinds = [k for k in common.NOISE_KINDS if any(k in r for r in rows)]
  columns = ["optimizer"] + kinds + [f"delta_{k}" for k in kinds if k != "none"]
  print("\nfinal validation loss by gradient noise (delta = noisy - clean)\n")
  print(common.format_table(rows, columns))
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6, 3.5))
  width = 0.8 / len(kinds)
  for i, kind in enumerate(kinds):
    ax.bar(np.arange(len(rows)) + i * width, [r.get(kind, np.nan) for r in rows],
           width, label=kind)
  ax.set_xticks(np.arange(len(rows)) + width * (len(kinds) - 1) / 2,
                [r["optimizer"] for r in rows])
  vals = [r[k] for r in rows for k in kinds if k in r and np.isfinite(r[k])]
  ax.set_ylim(min(vals) - 0.1, max(vals) + 0.1)
  ax.set(ylabel="final validation loss", title="robustness to gradient outliers")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "robustness.png", dpi=120)
  plt.close(fig)


main = common.make_main("lm.py", train_and_evaluate)

if __name__ == "__main__":
  app.run(main)
