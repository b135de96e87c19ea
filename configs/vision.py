"""Tiny ViT on sklearn digits: Muon vs ROOT at p in {0.85, 0.90, 0.95} (+ AdamW).

The analogue of the paper's Table 3. Regenerate with::

  python -m examples.vision.main --config configs/vision.py

Learning rates: ``configs/vision_sweep.py`` (3-point grid per family, 2 seeds);
every ROOT variant uses ROOT's rate.
"""

import ml_collections

from configs._runs import run

# Chosen by configs/vision_sweep.py (see docs/results.md).
LR = {"adamw": 1e-2, "muon": 1e-2, "root": 3e-2}
QUANTILES = (0.85, 0.90, 0.95)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "vision"
  c.title = "tiny ViT on sklearn digits"
  c.model = ml_collections.ConfigDict(
      dict(num_classes=10, patch=2, d_model=64, depth=2, num_heads=4, mlp_dim=128))
  c.batch_size = 64
  c.epochs = 12
  c.seeds = 5  # seed s: initialisation and batch order, shared by all optimizers
  c.optim = ml_collections.ConfigDict(dict(warmup=20, weight_decay=0.1, b1=0.9, b2=0.95))
  c.only = ""  # comma-separated run names to run a subset
  c.quick = dict(epochs=2, seeds=2, model=dict(d_model=32, depth=1, mlp_dim=64))
  return c


def get_config() -> ml_collections.ConfigDict:
  c = base_config()
  c.runs = (
      run("AdamW", "adamw", LR["adamw"]),
      run("Muon (optax)", "muon", LR["muon"]),
  ) + tuple(run(f"ROOT p={p:g}", "root", LR["root"], root=dict(variant="paper", quantile=p)) for p in QUANTILES)
  return c
