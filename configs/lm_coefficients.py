"""Which Newton-Schulz coefficients train best on the LM task (clean gradients).

Every run is `root()` with its defaults except ``ns_coeffs`` (and
``preconditioning``):

* ``'auto'``: per-shape, per-iteration Schatten-4 fits (the shipped 'ada'
  entries for this model's 128x128 and 128x512 matrices);
* ``'auto'`` fitted for Frobenius normalisation;
* ``'muon'``: Muon's triple for every shape (optax's default);
* ``'dion'``: optax's per-iteration preset.

optax Muon is the baseline of the paired comparison. The same model, data,
schedule, rate and seeds as ``configs/lm.py``; 5 runs x 3 seeds of 300 steps,
about 9 minutes on a 2-core CPU (two workers). Regenerate with::

  python -m examples.lm.main --config configs/lm_coefficients.py
"""

import ml_collections

from configs import lm
from configs._runs import run


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_coefficients"
  c.title = "Newton-Schulz coefficients (byte-level LM)"
  c.runs = (
      run("Muon (optax)", "muon", lm.LR["muon"]),
      run("ROOT auto", "root", lm.LR["root"], root={"ns_coeffs": "auto"}),
      run("ROOT auto frobenius", "root", lm.LR["root"],
          root={"ns_coeffs": "auto", "preconditioning": "frobenius"}),
      run("ROOT muon", "root", lm.LR["root"], root={"ns_coeffs": "muon"}),
      run("ROOT dion", "root", lm.LR["root"], root={"ns_coeffs": "dion"}),
  )
  return c
