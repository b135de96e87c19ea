"""Runnable examples, one folder per task: `python -m examples.lm.main` (repository root)."""
