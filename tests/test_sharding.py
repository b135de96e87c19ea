"""Tests of `root_optax.sharding`: the sharded Newton-Schulz path.

The multi-device cases need 8 CPU host devices, i.e. XLA_FLAGS set before jax
is imported, so they run in one subprocess (`_sharding_worker.py`) whose JSON
report each test below checks. Updates are compared with the single-device
updates at ``atol = 1e-5`` (fp32; after 3 steps at lr 1, entries of order 1;
the 8-device programs sum in a different order and XLA's CPU dot kernels round
differently for different batch sizes: the largest difference seen is 4e-6).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from root_optax._src import sharding as sharding_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import hlo_stats  # noqa: E402  (benchmarks/hlo_stats.py)

_HERE = pathlib.Path(__file__).resolve().parent
_ROOT = _HERE.parent
_WORKER_TIMEOUT_S = 600

# sharded-* / default-* / auto-axes-*: 3 steps of root() on a tree holding an
# FSDP-sharded and a tensor-parallel copy of a small transformer (a stacked
# layer leaf per weight); updates vs one device, shardings kept, one compile.
MULTI_DEVICE_CASES = (
    "sharded-8",
    "sharded-2x4",
    "sharded-4x2",
    "default-2x4",
    "auto-axes-sharded-4x2",
    "fast-quantile-collectives",
    "redistribution-bytes",
    "padding-and-zeros",
    "exact-threshold-explicit",
)


@pytest.fixture(scope="module")
def worker_report():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
  env.pop("XLA_FLAGS", None)
  # Every program compiles for real (no persistent cache, see conftest.py): the
  # worker counts backend compiles and the checks below read their log lines.
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  # XLA's C++ warnings (e.g. the rematerialization one) must reach stderr.
  env["TF_CPP_MIN_LOG_LEVEL"] = "0"
  proc = subprocess.run(
      [sys.executable, str(_HERE / "_sharding_worker.py")], cwd=_ROOT, env=env,
      capture_output=True, text=True, timeout=_WORKER_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  report["_stderr"] = proc.stderr
  return report


@pytest.mark.parametrize("case", MULTI_DEVICE_CASES)
def test_multi_device(worker_report, case):
  assert case in worker_report, f"worker did not run {case!r}"
  result = worker_report[case]
  assert result["ok"], result["detail"]


def test_no_involuntary_rematerialization(worker_report):
  # XLA's SPMD partitioner logs this (to stderr) when it cannot reshard a
  # tensor and replicates it instead; every compiled step of the worker must
  # move data without it (examples/pjit/train_test.py checks the example's step).
  lines = [line for line in worker_report["_stderr"].splitlines()
           if "Involuntary full rematerialization" in line]
  assert not lines, "\n".join(line[:400] for line in lines[:4])


@pytest.mark.parametrize("spec, names, want", [
    # FSDP on a 2x4 mesh: rows over both axes, moved in one all-to-all.
    (((), ("data", "model"), ()), ("data", "model"), [(("data", "model"), (), ())]),
    # 2-D tiling (tensor parallel + FSDP): columns first, then rows.
    (((), ("data",), ("model",)), ("data", "model"),
     [(("model",), ("data",), ()), (("model", "data"), (), ())]),
    # Replicated over 'data': only a local slice remains.
    (((), (), ("model",)), ("data", "model"),
     [(("model",), (), ()), (("model", "data"), (), ())]),
    # A stack already sharded on its layer axis keeps that axis first.
    ((("data",), (), ()), ("data", "model"), [(("data", "model"), (), ())]),
    # Fully replicated: one slice.
    (((), (), ()), ("x",), [(("x",), (), ())]),
])
def test_redistribution_path(spec, names, want):
  assert sharding_lib.redistribution_path(spec, names) == want


def test_redistribution_path_ends_on_the_stack_axis_with_every_axis_once():
  names = ("a", "b", "c")
  for spec in [((), ("a", "b"), ("c",)), (("c",), ("b",), ("a",)), ((), ("b",), ())]:
    last = sharding_lib.redistribution_path(spec, names)[-1]
    assert last[1:] == ((), ()) and sorted(last[0]) == sorted(names)


@pytest.mark.parametrize("batch, devices, want", [(1, 8, 8), (8, 8, 8), (9, 8, 16), (48, 8, 48)])
def test_padded_size(batch, devices, want):
  assert sharding_lib.padded_size(batch, devices) == want


@pytest.mark.parametrize("bad", ["mesh", 8, ("data",), P("data")])
def test_validate_sharding_rejects(bad):
  with pytest.raises(ValueError, match="sharding must be"):
    sharding_lib.validate_sharding(bad)


def test_find_mesh_single_device_means_plain_path():
  x = jnp.ones((2, 4, 8))
  assert sharding_lib.find_mesh(None, [x]) is None
  assert sharding_lib.find_mesh(sharding_lib.AUTO, [x]) is None
  one = jax.make_mesh((1,), ("x",))
  assert sharding_lib.find_mesh(one, [x]) is None


def test_shard_batch_without_mesh_is_the_function():
  x = jnp.arange(24.0).reshape(2, 3, 4)
  np.testing.assert_array_equal(sharding_lib.shard_batch(lambda s: 2 * s, x, None), 2 * x)


def test_collective_stats_parses_hlo():
  hlo = """
  %ag = f32[8,64]{1,0} all-gather(f32[1,64]{1,0} %p), dimensions={0}
  %ar = s32[3]{0} all-reduce(s32[3]{0} %c), to_apply=%add
  %a2a = (bf16[2,4]{1,0}, bf16[2,4]{1,0}) all-to-all(bf16[2,4]{1,0} %x, bf16[2,4]{1,0} %y)
  %ars = f32[4]{0} all-reduce-start(f32[4]{0} %z), to_apply=%add
  %add = f32[8,64]{1,0} add(%ag, %ag)
  """
  stats = hlo_stats.collective_stats(hlo)
  assert stats == {"all-gather": (1, 8 * 64 * 4), "all-reduce": (2, 3 * 4 + 4 * 4),
                   "all-to-all": (1, 2 * 2 * 4 * 2)}
