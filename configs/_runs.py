"""Helper shared by the configs: one run entry of ``config.runs``."""

import ml_collections


def run(name: str, optimizer: str, lr: float, **fields) -> ml_collections.ConfigDict:
  """A run: its display ``name``, ``optimizer`` ('adamw' | 'muon' | 'root'), peak ``lr``.

  Optional fields: ``root`` (keyword arguments of `root_optax.root`), ``noise``
  (a gradient-noise kind), ``family`` (groups runs in the robustness table).
  """
  return ml_collections.ConfigDict(dict(name=name, optimizer=optimizer, lr=lr, **fields))
