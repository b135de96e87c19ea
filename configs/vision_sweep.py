"""Learning-rate sweep behind the rates in ``configs/vision.py``.

AdamW, optax Muon and ROOT (p = 0.90) on a 3-point grid each, 2 seeds, the
same epochs and model; the rate with the best mean test accuracy (ties: lower
test loss) goes into ``configs/vision.py``. Regenerate with::

  python -m examples.vision.main --config configs/vision_sweep.py
"""

import ml_collections

from configs import vision
from configs._runs import run

GRID = {
    "adamw": (1e-3, 3e-3, 1e-2),
    "muon": (3e-3, 1e-2, 3e-2),
    "root": (3e-3, 1e-2, 3e-2),
}


def get_config() -> ml_collections.ConfigDict:
  c = vision.base_config()
  c.name = "vision_sweep"
  c.title = "tiny ViT learning-rate sweep"
  c.seeds = 2
  c.runs = tuple(run(f"{family} lr={lr:g}", family, lr)
                 for family, grid in GRID.items() for lr in grid)
  return c
