"""Smoke test of the pjit example: `--quick` on the 8-device CPU mesh lowers the loss."""

import csv
import math
import re

from examples.conftest import run_example


def test_train_pjit_quick(tmp_path):
  # No XLA_FLAGS: the example asks for 8 host devices itself. XLA's C++
  # warnings (e.g. the rematerialization one) must reach stderr, so the step
  # compiles for real (no persistent cache, see conftest.py).
  proc = run_example("examples.pjit.main", ["--config.steps", "20"], tmp_path,
                     env_overrides={"TF_CPP_MIN_LOG_LEVEL": "0", "XLA_FLAGS": "",
                                    "JAX_ENABLE_COMPILATION_CACHE": "false"})
  assert "8 x cpu devices, mesh {'data': 2, 'model': 4}" in proc.stdout
  with open(tmp_path / "losses.csv") as f:
    losses = [float(r["loss"]) for r in csv.DictReader(f)]
  first, last = losses[0], losses[-1]
  assert math.isfinite(last) and last < first - 0.5, (first, last)
  step_ms = float(re.search(r"median step time ([\d.]+) ms", proc.stdout)[1])
  assert step_ms > 0
  # XLA's SPMD partitioner logs this when it cannot reshard a tensor and
  # replicates it instead; the example's step must move data without it.
  lines = [line for line in proc.stderr.splitlines()
           if "Involuntary full rematerialization" in line]
  assert not lines, "\n".join(line[:400] for line in lines[:4])
