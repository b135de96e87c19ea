"""Robustness to gradient outliers: the LM task with corrupted gradients.

Each optimizer family trains on clean gradients and with three corruptions, for
every seed in ``seeds`` (seed s: the same initialisation, batches and
corruption pattern for every family). The corruption is applied to the
gradients the optimizer receives, and depends only on (seed, step), so every
optimizer sees the same; the loss is always measured on clean data (see
`examples.common.noise.inject_noise`):

* 'spikes': 0.1% of the entries of every gradient leaf get an added
  +-100 x rms(leaf) (random sign), every step (~65 entries of a 128x512 matrix);
* 'student_t': dense additive Student-t noise, df = 2 (infinite variance),
  scale 0.5 x the leaf's rms, every step;
* 'bursts': on a Bernoulli(0.01) subset of the steps (fixed per seed: 5, 4
  and 2 of the 300 steps for seeds 0, 1, 2; the table prints them), every
  hidden matrix (2-D, not embed / lm_head) gets an added random direction of
  30 x its Frobenius norm.

Families: AdamW, optax Muon, ROOT (`root_optax.root`'s defaults) and ROOT as
published (``variant="paper"``). The table gives, per family and kind, the
final validation loss (mean ± std over seeds), the damage (noisy - clean,
paired by seed; mean ± SE) and the damage against Muon's. 4 families x 4 kinds
x 3 seeds = 48 runs of 300 steps, about 25 minutes on a 2-core CPU (two
workers). Regenerate with::

  python -m examples.lm.main --config configs/lm_outliers.py
"""

import ml_collections

from configs import lm
from configs._runs import root_paper
from configs._runs import robustness_config

FAMILIES = (
    ("AdamW", "adamw", {}),
    ("Muon (optax)", "muon", {}),
    ("ROOT", "root", {"root": {}}),
    ("ROOT paper", "root", {"root": root_paper()}),
)
NOISE = ("none", "spikes", "student_t", "bursts")


def get_config() -> ml_collections.ConfigDict:
  return robustness_config(lm.base_config(), 'lm_outliers', 'robustness to gradient outliers (byte-level LM)', FAMILIES, NOISE, rates=lm.LR)
