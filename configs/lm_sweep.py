"""Learning-rate sweep behind the rates in ``configs/lm.py``.

Each optimizer family (AdamW, optax Muon, ROOT with its defaults) is trained on
a grid of 4-5 rates around its usual rate, at half the main horizon (150 steps, the
same model, data and schedule shape), and the rate with the lowest final
validation loss (mean over the seeds of ``configs/lm.py``) is copied into
``configs/lm.py``'s ``LR``. The ROOT ablations reuse ROOT's rate. 13 runs x 3
seeds of 150 steps, about 11 minutes on a 2-core CPU with two workers. Regenerate with::

  python -m examples.lm.main --config configs/lm_sweep.py
"""

import ml_collections

from configs import lm
from configs._runs import run

GRID = {
    "adamw": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "muon": (3e-3, 1e-2, 3e-2, 1e-1),
    "root": (3e-3, 1e-2, 3e-2, 1e-1),
}


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_sweep"
  c.title = "learning-rate sweep (150 steps)"
  c.steps = 150
  c.baseline = ""  # no paired comparison across learning rates
  c.runs = tuple(
      run(f"{family} lr={lr:g}", family, lr, family=family)
      for family, grid in GRID.items() for lr in grid)
  return c
