"""Sharded training: a small Flax GPT with ROOT on a ('data', 'model') device mesh.

Run (from the repository root)::

  python -m examples.pjit.main --quick                                    # < 1 min on CPU
  python -m examples.pjit.main --config configs/pjit.py --config.steps 300 --config.sharding none

``sharding``: ``'auto'`` (`root(sharding='auto')`: whole matrices per device),
``'mesh'`` (the same, given the mesh) or ``'none'`` (Newton-Schulz left to
XLA's partitioner, for comparison).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "pjit"
  c.vocab = 64
  c.d_model = 128
  c.heads = 4
  c.layers = 4
  c.seq_len = 32
  c.batch = 32
  c.steps = 200
  c.learning_rate = 0.02
  c.log_every = 20
  c.sharding = "auto"
  c.seed = 0
  # `--quick` overrides: a tiny model, 30 steps.
  c.quick = dict(d_model=64, layers=2, steps=30, log_every=10)
  return c
