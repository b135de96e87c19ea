"""Main LM comparison: ROOT vs optax.contrib.muon vs AdamW, over 3 seeds.

Runs: AdamW, optax Muon, ROOT (`root_optax.root`'s defaults) and ROOT as
published (``variant="paper"``, with Muon's Newton-Schulz triple: Table 1 has
no entry for this model's shapes), each for seeds 0, 1, 2 (seed s: the same
initialisation, batch order and gradient noise for every run), compared seed
by seed with Muon. ROOT's ablations (each fix alone) are in
``configs/lm_ablations.py``, so that this job, the README's quick start, keeps
3 seeds and stays under 10 minutes on a 2-core CPU (4 runs x 3 seeds x 300
steps in two single-threaded workers). Regenerate (from the repository root)::

  python -m examples.lm.main --config configs/lm.py

Learning rates: the best final validation loss of each family in
``configs/lm_sweep.py`` (150 steps; AdamW 1e-3, Muon 3e-2, ROOT 3e-2, all
interior points of the grid); the ROOT variants and ablations use ROOT's rate,
as the paper does. See docs/results.md for the sweep table.
"""

import ml_collections

from configs._runs import root_paper
from configs._runs import run

# From configs/lm_sweep.py (see the module docstring).
LR = {"adamw": 1e-3, "muon": 3e-2, "root": 3e-2}


def base_config() -> ml_collections.ConfigDict:
  """Model, data and schedule shared by every LM experiment."""
  c = ml_collections.ConfigDict()
  c.name = "lm"
  c.title = "byte-level LM on the Python stdlib"
  # Seed s fixes the model initialisation, the batch order and the gradient
  # corruption of every run, so runs are paired by seed; every run is trained
  # once per seed and the tables give mean ± std over seeds.
  c.seeds = (0, 1, 2)
  # The paired comparison: every run minus this run (same seed, same noise).
  c.baseline = "Muon (optax)"
  # (run, seed) jobs go to this many worker processes; 0: all in this process.
  # Every process that trains runs XLA single-threaded, pinned to one core, so
  # the losses are bit-identical for any number of workers.
  c.workers = 2
  c.model = ml_collections.ConfigDict(dict(d_model=128, num_layers=2, num_heads=4))
  c.data = ml_collections.ConfigDict(dict(val_every=10, max_train_bytes=0, max_val_bytes=0))
  c.batch_size = 8
  c.seq_len = 128
  c.steps = 300
  c.eval_every = 50
  c.eval_batches = 8
  c.train_loss_window = 30
  c.optim = ml_collections.ConfigDict(dict(warmup=30, weight_decay=0.1, b1=0.9, b2=0.95))
  # Gradient corruption (robustness experiment); runs may override `kind`.
  # See `examples.common.noise.inject_noise`.
  c.noise = ml_collections.ConfigDict(dict(
      kind="none", fraction=1e-3, spike_scale=100.0, t_scale=0.5, df=2.0,
      burst_prob=0.01, burst_scale=30.0))
  c.report = "compare"
  c.only = ""  # comma-separated run names to run a subset
  # `--quick` overrides (a smoke run of well under a minute).
  c.quick = dict(
      steps=20, eval_every=10, eval_batches=2, batch_size=8, seq_len=64, train_loss_window=5,
      model=dict(d_model=64, num_layers=1), optim=dict(warmup=5),
      data=dict(max_train_bytes=200_000, max_val_bytes=50_000))
  return c


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.runs = (
      run("AdamW", "adamw", LR["adamw"]),
      run("Muon (optax)", "muon", LR["muon"]),
      run("ROOT", "root", LR["root"], root={}),  # root_optax.root's defaults
      run("ROOT paper", "root", LR["root"], root=root_paper()),  # Muon's triple: see root_paper
  )
  return c
