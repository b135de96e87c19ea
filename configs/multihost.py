"""Multi-host training: a Flax MLP on a synthetic task with ROOT, on a global mesh.

One machine, 2 worker processes x 4 CPU devices (from the repository root)::

  python -m examples.multihost.main --processes 2 --workdir /tmp/root_multihost

The run's size (40 steps of 64 examples) is already a smoke run; see
docs/multihost.md for clusters, evaluation and fault tolerance.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "multihost"
  c.steps = 40  # total optimizer steps (a resumed run counts from 0)
  c.global_batch = 64  # examples per step, summed over all processes
  c.features = 16  # input width of the synthetic task
  c.hidden = 32  # width of the two hidden layers
  c.classes = 4
  c.learning_rate = 0.02  # of root_optax.root (ROOT and AdamW leaves)
  c.seed = 0  # the teacher, the data stream and the initial params
  # "data,model" mesh shape, -1 taking the remaining devices (e.g. "4,2", "-1,1").
  # "": (processes, devices per process), so that only the data axis crosses hosts.
  c.mesh = ""
  c.checkpoint_every = 10  # save every this many steps, and at the end
  c.log_every = 10  # process 0 prints the loss every this many steps
  return c
