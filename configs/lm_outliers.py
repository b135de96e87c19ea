"""Robustness to gradient outliers: the LM task with corrupted gradients.

Each optimizer trains three times from the same start: on clean gradients, with
'spikes' (each gradient entry multiplied by 100 with probability 1e-3, i.e. ~65
huge entries in a 128x512 matrix every step), and with additive Student-t noise
(df = 2, so infinite variance; scale 0.5 x each leaf's gradient RMS). The
loss is always measured on clean data; the corruption is applied to the
gradients the optimizer receives, with the same pattern for every optimizer.
Regenerate with::

  python examples/train_lm.py --config configs/lm_outliers.py
"""

import ml_collections

from configs import lm
from configs._runs import run

FAMILIES = (
    ("AdamW", "adamw", {}),
    ("Muon (optax)", "muon", {}),
    ("ROOT", "root", {"root": dict(quantile=0.90)}),
)
NOISE = ("none", "spikes", "student_t")


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_outliers"
  c.title = "robustness to gradient outliers (byte-level LM)"
  c.report = "robustness"
  c.runs = tuple(
      run(f"{name} [{noise}]", optimizer, lm.LR[optimizer], family=name,
             noise=noise, **extra)
      for name, optimizer, extra in FAMILIES for noise in NOISE)
  return c
