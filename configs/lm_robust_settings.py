"""The robust default's settings, one at a time, on the LM task (clean and spiked).

What each stage of ``root(variant="robust")`` costs on clean gradients and
buys against sparse spikes, one setting changed at a time:

* the outlier gate's multiplier ``outlier_gate`` (3, 6, 10; ``inf`` turns the
  gate off);
* the burst guard off (``burst_factor=inf``) and at 8x instead of 4x;

all with AdaNewton's ``ns_coeffs="auto"``, and the default (Muon's triple)
for comparison.

Noise kinds as in ``configs/lm_outliers.py`` ('none' and 'spikes'). The same
model, data, schedule, rate and seeds as ``configs/lm.py``; the paired
comparison is against optax Muon on the same noise. 8 families x 2 kinds x 3
seeds = 48 runs of 300 steps, about 31 minutes on a 2-core CPU (two workers).
Regenerate with::

  python -m examples.lm.main --config configs/lm_robust_settings.py
"""

import math

import ml_collections

from configs import lm
from configs._runs import robustness_config

AUTO = {"ns_coeffs": "auto"}  # the base of these rows: AdaNewton coefficients
FAMILIES = (
    ("Muon (optax)", "muon", {}),
    ("ROOT auto", "root", {"root": dict(AUTO)}),
    ("ROOT auto gate=6", "root", {"root": dict(AUTO, outlier_gate=6.0)}),
    ("ROOT auto gate=10", "root", {"root": dict(AUTO, outlier_gate=10.0)}),
    ("ROOT auto gate off", "root", {"root": dict(AUTO, outlier_gate=math.inf)}),
    ("ROOT auto burst off", "root", {"root": dict(AUTO, burst_factor=math.inf)}),
    ("ROOT auto burst=8", "root", {"root": dict(AUTO, burst_factor=8.0)}),
    ("ROOT (default: Muon's triple)", "root", {"root": {}}),
)
NOISE = ("none", "spikes")


def get_config() -> ml_collections.ConfigDict:
  return robustness_config(lm.base_config(), 'lm_robust_settings', 'settings of the robust default (byte-level LM)', FAMILIES, NOISE)
