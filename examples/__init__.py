"""Runnable examples: `python examples/train_lm.py` or `python -m examples.train_lm`."""
