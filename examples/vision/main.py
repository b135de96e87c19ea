r"""Tiny ViT on scikit-learn's digits (Flax linen + TrainState): Muon vs ROOT.

Usage (from the repository root)::

  python -m examples.vision.main
  python -m examples.vision.main --quick
  python -m examples.vision.main --config configs/vision.py --config.seeds "(0, 1, 2)"
  python -m examples.vision.main --config configs/vision_sweep.py

Flags: ``--config`` (default ``configs/vision.py``), ``--workdir`` (default
``runs/<config.name>``), ``--quick``. What is trained and written:
`examples.vision.train`.
"""

from absl import app

from examples.common import runtime
from examples.vision import train

main = runtime.make_main("vision.py", train.train_and_evaluate)

if __name__ == "__main__":
  app.run(main)
