"""Weight decay on vectors: `root()`'s default (every parameter) against sparing them.

`root()` decays every parameter, in both branches, as the reference does; a
``weight_decay_mask`` can spare biases, norm scales and other vectors. This
trains both on the LM task (``configs/lm.py``'s model, data, schedule, ROOT's
rate and seeds 0-2), paired by seed, with the default as the baseline.
Regenerate with::

  python -m examples.lm.main --config configs/lm_weight_decay.py
"""

import ml_collections

from configs import lm
from configs._runs import run


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_weight_decay"
  c.title = "weight decay on vectors (byte-level LM)"
  c.baseline = "ROOT"
  c.runs = (
      run("ROOT", "root", lm.LR["root"], root={}),
      run("ROOT, vectors not decayed", "root", lm.LR["root"], root=dict(weight_decay_mask="matrices")),
  )
  return c
