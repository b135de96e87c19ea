"""ROOT's parts one at a time on the LM task, against `root()`'s defaults.

* "ROOT" (the baseline of the paired comparison): `root_optax.root`'s defaults
  (outlier gate and burst guard on the gradient, Muon's Newton-Schulz triple);
* "ROOT + AdaNewton": the defaults with ``ns_coeffs="auto"`` (per-shape,
  per-iteration coefficients);
* "ROOT without outlier handling": gate, burst guard and momentum clip off;
* optax Muon is the reference.

The same model, data, schedule, rate (ROOT's, as the paper does) and seeds as
``configs/lm.py``; 4 runs x 3 seeds of 300 steps, about 6 minutes on an idle 2-core
CPU (two workers). Regenerate with::

  python -m examples.lm.main --config configs/lm_ablations.py
"""

import ml_collections

from configs import lm
from configs._runs import root_adanewton
from configs._runs import root_without_outlier_handling
from configs._runs import run


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_ablations"
  c.title = "ROOT ablations (byte-level LM)"
  c.baseline = "ROOT"
  c.runs = (
      run("Muon (optax)", "muon", lm.LR["muon"]),
      run("ROOT", "root", lm.LR["root"], root={}),
      run("ROOT + AdaNewton", "root", lm.LR["root"], root=root_adanewton()),
      run("ROOT without outlier handling", "root", lm.LR["root"], root=root_without_outlier_handling()),
  )
  return c
