"""Fewer Newton-Schulz steps: does ROOT train as well with 4 or 3 steps as with 5?

Every run is `root()` with its defaults except ``ns_steps`` (and
``ns_coeffs``): Muon's triple at 5 steps (the default) and at 4; ``'auto'``
(per-shape, per-iteration coefficients fitted for the step count) at 4 and 3.
The paired comparison is against the default at 5 steps. The same model,
data, schedule, rate and seeds as ``configs/lm.py``; 4 runs x 3 seeds of 300
steps, about 8 minutes on a 2-core CPU (two workers). Regenerate with::

  python -m examples.lm.main --config configs/lm_ns_steps.py
"""

import ml_collections

from configs import lm
from configs._runs import run


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_ns_steps"
  c.title = "Newton-Schulz steps (byte-level LM)"
  c.baseline = "ROOT 5 steps"
  c.runs = (
      run("ROOT 5 steps", "root", lm.LR["root"], root={}),
      run("ROOT 4 steps", "root", lm.LR["root"], root={"ns_steps": 4}),
      run("ROOT auto 4 steps", "root", lm.LR["root"], root={"ns_coeffs": "auto", "ns_steps": 4}),
      run("ROOT auto 3 steps", "root", lm.LR["root"], root={"ns_coeffs": "auto", "ns_steps": 3}),
  )
  return c
