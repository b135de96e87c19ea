"""ROOT's outlier quantile p on the LM task (analogue of the paper's Fig. 4).

The paper variant (``variant="paper"``) with
p in {0.85, 0.90, 0.95, 0.99}, plus p = 1.0 (no clipping: the threshold is the
largest entry), all at ROOT's rate from ``configs/lm.py``, each for the seeds
of ``configs/lm.py`` (mean ± std; paired differences from p = 0.9). 15 runs of
300 steps, about 8 minutes on a 2-core CPU (two workers). Regenerate with::

  python -m examples.lm.main --config configs/lm_quantile.py
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
  c.baseline = "ROOT p=0.9"
  c.runs = tuple(
      run(f"ROOT p={p:g}", "root", lm.LR["root"], root=dict(variant="paper", quantile=p))
      for p in QUANTILES)
  return c
