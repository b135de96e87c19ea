"""Trains a small Flax GPT with ROOT on a device mesh (FSDP x tensor parallel).

Usage (from the repository root)::

  python -m examples.pjit.main --quick            # < 1 min on CPU
  python -m examples.pjit.main --config.steps 300 --config.sharding none

Flags: ``--config`` (default ``configs/pjit.py``), ``--workdir`` (default
``runs/<config.name>``; gets ``losses.csv``), ``--quick``. On a CPU-only
machine this asks XLA for 8 host devices (unless XLA_FLAGS already sets a
count); on GPUs/TPUs it uses the devices there are. What is trained:
`examples.pjit.train`.
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Before JAX starts. Only affects the CPU platform; GPUs/TPUs keep their real devices.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")

from absl import app  # noqa: E402

from examples.common import runtime  # noqa: E402
from examples.pjit import train  # noqa: E402

main = runtime.make_main("pjit.py", train.train_and_evaluate)

if __name__ == "__main__":
  app.run(main)
