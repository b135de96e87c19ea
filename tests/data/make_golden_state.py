"""Writes tests/data/golden_state: a small orbax checkpoint of `root()`'s state.

`tests/test_checkpoint.py::test_golden_state_restores_and_steps` restores it into
today's `root()` and checks the next update against the one saved here, so a
change to the state layout or to the step is caught. Regenerate only for an
intended change, and say so in the CHANGELOG:

  python tests/data/make_golden_state.py
"""

import pathlib
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

HERE = pathlib.Path(__file__).resolve().parent
PATH = HERE / "golden_state"
STEPS = 3


def params_and_grads():
  rng = np.random.default_rng(7)
  shapes = {"w": (8, 16), "v": (16, 8), "b": (16,)}
  make = lambda: {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  return make(), [make() for _ in range(STEPS + 1)]


def optimizer():
  import root_optax  # pylint: disable=import-outside-toplevel
  return root_optax.root(1e-2)


def main():
  params, grads = params_and_grads()
  tx = optimizer()
  state = tx.init(params)
  for g in grads[:STEPS]:
    _, state = tx.update(g, state, params)
  next_update, _ = tx.update(grads[STEPS], state, params)
  if PATH.exists():
    shutil.rmtree(PATH)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(PATH / "state", {"opt_state": state})
  checkpointer.wait_until_finished()
  np.savez(PATH / "next_update.npz", **jax.tree.map(np.asarray, next_update))
  print(f"wrote {PATH}")


if __name__ == "__main__":
  main()
