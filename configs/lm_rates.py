"""`root()` against optax Muon at one learning rate, paired by seed.

The rate is the config's argument; the grid is ``configs/lm_sweep.py``'s
(150 steps, the same model, data and schedule shape)::

  for lr in 0.003 0.01 0.03 0.1; do
    python -m examples.lm.main --config configs/lm_rates.py:$lr --workdir runs/lm_rates_$lr
  done

Runs: optax Muon, `root()` and `root()` with its gate off, at that rate, seeds 0-5
(seeds 0-2 chose the default's settings; 3-5 chose nothing).
"""

import math

import ml_collections

from configs import lm
from configs._runs import run


def get_config(rate: str = "0.1") -> ml_collections.ConfigDict:
  lr = float(rate)
  c = lm.base_config()
  c.name, c.title = f"lm_rates_{lr:g}", f"ROOT vs Muon at lr {lr:g} (150 steps)"
  c.steps = 150
  c.seeds = (0, 1, 2, 3, 4, 5)
  c.runs = (
      run("Muon (optax)", "muon", lr),
      run("ROOT", "root", lr, root={}),
      run("ROOT gate off", "root", lr, root=dict(outlier_gate=math.inf)),
  )
  return c
