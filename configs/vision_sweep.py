"""Learning-rate sweep behind the rates in ``configs/vision.py``.

AdamW, optax Muon, ROOT's default and ROOT as published (``variant="paper"``,
p = 0.90) on a 4-point grid each (AdamW 5), seeds 0-2, the same epochs and model. Runs
are scored on the validation split (held out of the training images; the test
split is never used here); the rate with the best mean validation accuracy
(ties: lower validation loss) goes into ``configs/vision.py``. Regenerate with::

  python -m examples.vision.main --config configs/vision_sweep.py
"""

import ml_collections

from configs import vision
from configs._runs import root_paper
from configs._runs import run

GRID = (3e-3, 1e-2, 3e-2, 1e-1)
FAMILIES = (
    ("AdamW", "adamw", {}, (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
    ("Muon (optax)", "muon", {}, GRID),
    ("ROOT (default)", "root", {}, GRID),
    ("ROOT paper p=0.9", "root", dict(root_paper(), quantile=0.90), GRID),
)


def get_config() -> ml_collections.ConfigDict:
  c = vision.base_config()
  c.name = "vision_sweep"
  c.title = "tiny ViT learning-rate sweep (validation split)"
  c.seeds = (0, 1, 2)
  c.evaluate_on = "validation"
  c.baseline = "Muon (optax) lr=0.01"
  c.runs = tuple(run(f"{family} lr={lr:g}", optimizer, lr, family=family, root=kwargs)
                 for family, optimizer, kwargs, grid in FAMILIES for lr in grid)
  return c
