"""Choosing the outlier gate: candidates on seeds 0-2 (fresh seeds 3-5 confirm).

Each family trains on clean gradients and with the 'spikes' and 'bursts'
corruptions of ``configs/lm_outliers.py``; the table gives final validation
losses, damage (noisy - clean, paired by seed) and damage against Muon's.
Regenerate with::

  python -m examples.lm.main --config configs/lm_gate.py
  python -m examples.lm.main --config configs/lm_gate.py --config.steps 1000
"""

import math

import ml_collections

from configs import lm
from configs._runs import robustness_config

FAMILIES = (
    ("Muon (optax)", "muon", {}),
    ("ROOT k=10", "root", {"root": dict(outlier_gate=10.0)}),
    ("ROOT k=6", "root", {"root": dict(outlier_gate=6.0)}),
    ("ROOT gate off", "root", {"root": dict(outlier_gate=math.inf)}),
)
NOISE = ("none", "spikes", "bursts")


def get_config() -> ml_collections.ConfigDict:
  return robustness_config(lm.base_config(), "lm_gate", "outlier gate candidates (byte-level LM)",
                           FAMILIES, NOISE, rates=lm.LR)
