"""Coefficients refined from a run's own Newton-Schulz inputs (`examples/lm/refine.py`).

The baseline is the "ROOT" run of ``configs/lm.py`` (`root()`'s defaults:
Muon's triple), trained with the same model, data, schedule, rate and seeds.
While it trains, the Newton-Schulz input of every hidden matrix is recorded
every ``record_every`` steps; coefficients are then fitted per shape with
`root_optax.calibrate` on a mix of those spectra and Gaussian ones, and each
``variants`` entry is trained with them from step 1, from the same seed.
Regenerate with::

  python -m examples.lm.refine
"""

import ml_collections

from configs import lm
from configs._runs import run

BASELINE = "ROOT"


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_refine"
  c.title = "AdaNewton coefficients refined from recorded Newton-Schulz inputs (byte-level LM)"
  c.baseline = BASELINE
  c.runs = (run(BASELINE, "root", lm.LR["root"], root={}),)  # root_optax.root's defaults
  c.record_every = 5
  # The "early" spectra: what an in-run refinement at this step would have.
  c.early_steps = 50
  # The calibrate() keywords shared by every variant (the paper's Sec. 4.5 fit
  # is Frobenius-normalised, as the baseline's Newton-Schulz).
  c.calibration = ml_collections.ConfigDict(dict(ns_steps=5, normalization="frobenius"))
  # name, recorded spectra ('early' or 'all'), share of the objective on them.
  c.variants = (
      ("ROOT refined early", "early", 0.25),
      ("ROOT refined oracle", "all", 0.25),
      ("ROOT refined oracle, real only", "all", 1.0),
  )
  # Quick: one seed, both recordings, both shares, cheaper fits.
  c.quick.update(dict(seeds=(0,), record_every=2, early_steps=10,
                      calibration=dict(num_values=1024, num_steps=30),
                      variants=(c.variants[0], c.variants[2])))
  return c
