"""The whole-run comparison: 1500 steps, clean and corrupted, 6 seeds.

The main job (``configs/lm.py``) stops at 300 steps; a gap between optimizers
can grow, shrink or turn around over a longer run. This trains the same model
and data 5x longer (the same warmup, cosine decay over 1500 steps) and reports
the final losses, the damage of each gradient corruption of
``configs/lm_outliers.py`` ('spikes', 'bursts'), and the paired gap to optax
Muon at steps 300, 600, 1000 and 1500.

Runs: optax Muon, `root()` (the default), `root()` with its gate off, and
`root(variant="paper")` on clean data; Muon and `root()` with spikes and with
bursts. Seeds 0-5: seeds 0-2 are the seeds the default's settings were chosen
on (at 300 steps, ``configs/lm_gate.py``), seeds 3-5 chose nothing;
``--config.seeds "(3, 4, 5)"`` reports the fresh seeds alone. 48 runs of
1500 steps, about 90 minutes on a 2-core CPU (two workers). Regenerate with::

  python -m examples.lm.main --config configs/lm_long.py
"""

import math

import ml_collections

from configs import lm
from configs._runs import root_paper
from configs._runs import run

FAMILIES = {
    "Muon (optax)": ("muon", {}),
    "ROOT": ("root", {"root": {}}),
    "ROOT gate off": ("root", {"root": dict(outlier_gate=math.inf)}),
    "ROOT paper": ("root", {"root": root_paper()}),
}
# Which families train on which gradients.
CONDITIONS = {
    "none": ("Muon (optax)", "ROOT", "ROOT gate off", "ROOT paper"),
    "spikes": ("Muon (optax)", "ROOT"),
    "bursts": ("Muon (optax)", "ROOT"),
}


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name, c.title, c.report = "lm_long", "whole runs: 1500 steps (byte-level LM)", "robustness"
  c.steps = 1500
  c.eval_every = 100
  c.seeds = (0, 1, 2, 3, 4, 5)
  c.gap_steps = (300, 600, 1000, 1500)
  runs = []
  for noise, families in CONDITIONS.items():
    for family in families:
      optimizer, extra = FAMILIES[family]
      runs.append(run(f"{family} [{noise}]", optimizer, lm.LR[optimizer], family=family,
                      noise=noise, **extra))
  c.runs = tuple(runs)
  return c
