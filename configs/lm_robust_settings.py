"""The robust default's settings, one at a time, on the LM task (clean and spiked).

What each stage of ``root(variant="robust")`` costs on clean gradients and
buys against sparse spikes, with every other setting at its default:

* the outlier gate's multiplier ``outlier_gate`` (3, 6, 10; ``inf`` turns the
  gate off);
* the burst guard off (``burst_factor=inf``) and at 8x instead of 4x;
* Muon's Newton-Schulz triple instead of the 'auto' coefficients.

Noise kinds as in ``configs/lm_outliers.py`` ('none' and 'spikes'). The same
model, data, schedule, rate and seeds as ``configs/lm.py``; the paired
comparison is against optax Muon on the same noise. 8 families x 2 kinds x 3
seeds = 48 runs of 300 steps, about 25 minutes on a 2-core CPU (two workers).
Regenerate with::

  python examples/train_lm.py --config configs/lm_robust_settings.py
"""

import math

import ml_collections

from configs import lm
from configs._runs import run

FAMILIES = (
    ("Muon (optax)", "muon", {}),
    ("ROOT", "root", {"root": {}}),
    ("ROOT gate=6", "root", {"root": {"outlier_gate": 6.0}}),
    ("ROOT gate=10", "root", {"root": {"outlier_gate": 10.0}}),
    ("ROOT gate off", "root", {"root": {"outlier_gate": math.inf}}),
    ("ROOT burst off", "root", {"root": {"burst_factor": math.inf}}),
    ("ROOT burst=8", "root", {"root": {"burst_factor": 8.0}}),
    ("ROOT muon coeffs", "root", {"root": {"ns_coeffs": "muon"}}),
)
NOISE = ("none", "spikes")


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_robust_settings"
  c.title = "settings of the robust default (byte-level LM)"
  c.report = "robustness"
  c.runs = tuple(
      run(f"{name} [{noise}]", optimizer, lm.LR[optimizer], family=name,
          noise=noise, **extra)
      for name, optimizer, extra in FAMILIES for noise in NOISE)
  return c
