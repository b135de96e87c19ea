r"""Byte-level transformer LM on the Python standard library: ROOT vs Muon vs AdamW.

Usage (from the repository root)::

  python -m examples.lm.main                                   # main comparison
  python -m examples.lm.main --quick                           # < 1 minute smoke run
  python -m examples.lm.main --config configs/lm_ablations.py  # ROOT's two fixes, one at a time
  python -m examples.lm.main --config configs/lm_quantile.py   # paper Fig. 4 analogue
  python -m examples.lm.main --config configs/lm_outliers.py   # gradient-noise robustness
  python -m examples.lm.main --config.steps 200 --config.seeds "(0, 1, 2, 3)" --workdir /tmp/lm

Flags: ``--config`` (default ``configs/lm.py``; any field can be overridden,
e.g. ``--config.workers 0``), ``--workdir`` (default ``runs/<config.name>``)
and ``--quick`` (the config's ``quick`` overrides). What is trained and
written: `examples.lm.train`.
"""

from absl import app

from examples.common import runtime
from examples.lm import train

main = runtime.make_main("lm.py", train.train_and_evaluate)

if __name__ == "__main__":
  app.run(main)
