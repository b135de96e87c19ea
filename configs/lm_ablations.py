"""ROOT's two fixes one at a time on the LM task, against the full ROOT.

* "AdaNewton only": `root_optax.root`'s defaults without outlier handling
  (``outliers=False``; until `root()` has that switch, ``quantile=1.0``, which
  clips nothing);
* "outlier handling only": the defaults with Muon's Newton-Schulz triple for
  every shape (``ns_coeffs="muon"``);
* ROOT (the defaults) is the baseline of the paired comparison; optax Muon
  (neither fix, and optax's own momentum) is the reference.

The same model, data, schedule, rate (ROOT's, as the paper does) and seeds as
``configs/lm.py``; 4 runs x 3 seeds of 300 steps, about 6 minutes on an idle 2-core
CPU (two workers). These runs were in the main job before; they are here so that
the main job keeps 3 seeds within 10 minutes. Regenerate with::

  python examples/train_lm.py --config configs/lm_ablations.py
"""

import ml_collections

from configs import lm
from configs._runs import root_muon_coefficients
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
      run("AdaNewton only", "root", lm.LR["root"], root=root_without_outlier_handling()),
      run("outlier handling only", "root", lm.LR["root"], root=root_muon_coefficients()),
  )
  return c
