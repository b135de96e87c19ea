"""ROOT's outlier quantile p on the LM task (analogue of the paper's Fig. 4).

p in {0.85, 0.90, 0.95, 0.99}, plus p = 1.0 (no clipping: the threshold is the
largest entry), all at ROOT's rate from ``configs/lm.py``. Regenerate with::

  python examples/train_lm.py --config configs/lm_quantile.py
"""

import ml_collections

from configs import lm
from configs._runs import run

QUANTILES = (0.85, 0.90, 0.95, 0.99, 1.0)


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_quantile"
  c.title = "ROOT quantile ablation (byte-level LM)"
  c.report = "quantile"
  c.runs = tuple(
      run(f"ROOT p={p:g}", "root", lm.LR["root"], root=dict(quantile=p))
      for p in QUANTILES)
  return c
