"""Multi-host training with `examples/multihost/`: 2 processes x 4 CPU devices.

The runs are real: each starts `python -m examples.multihost.main` in its own processes (workers joined
by `jax.distributed` on loopback, gloo collectives), bounded by a timeout. They
share one persistent compilation cache, so only the first run of a program
compiles it. The runs:

  A  2 processes, 8 steps, checkpoints at 4 and 8 (uninterrupted).
  B  this (pytest's) process, 1 device, 8 steps: the single-process reference.
  C  like A, but worker 1 SIGKILLs itself right after starting the step-8 save.
  D  the same command as C again: resumes from step 4.
  E  1 process, 8 devices, mesh 2x4: restores A's checkpoint to evaluate it.
  F  2 workers started without the launcher; worker 1 dies after step 2 and
     worker 0 must abort by itself at the heartbeat timeout.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import multihost as multihost_config
from examples.multihost import checkpoint
from examples.multihost import train as mt

ROOT = Path(__file__).resolve().parents[1]
MODULE = "examples.multihost.main"
STEPS, EVERY, KILL_AFTER = 8, 4, 8
# Mesh 4x2 puts the data axis across both processes and makes XLA move Newton-Schulz
# work across them too (see docs/multihost.md): the most cross-host traffic.
TRAIN = ["--config.steps", str(STEPS), "--config.checkpoint_every", str(EVERY),
         "--config.log_every", "4", "--config.mesh", "4,2"]
PHASE_TIMEOUT_S = 150  # per phase; generous because CI cores may be shared
HEARTBEAT_S = 5
TMP_SUFFIX = ".orbax-checkpoint-tmp"


def _gloo_available() -> bool:
  from jax._src.lib import _jax  # the one place jaxlib says whether it has gloo
  return hasattr(_jax, "make_gloo_tcp_collectives")


needs_gloo = pytest.mark.skipif(
    not _gloo_available(), reason="this jaxlib has no gloo CPU collectives")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(tmp: Path, devices: int) -> dict:
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  return dict(
      os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
      JAX_PLATFORMS="cpu", PYTHONWARNINGS="ignore",
      XLA_FLAGS=" ".join(flags + [f"--xla_force_host_platform_device_count={devices}"]),
      JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _start(tmp: Path, name: str, args: list[str], devices: int = 1) -> dict:
  log = open(tmp / f"{name}.log", "w")
  proc = subprocess.Popen([sys.executable, "-m", MODULE, *args], stdout=log, stderr=subprocess.STDOUT,
                          env=_env(tmp, devices), cwd=str(ROOT), start_new_session=True)
  return {"name": name, "proc": proc, "log": log, "start": time.time()}


def _finish(jobs: list[dict], timeout: float) -> None:
  """Waits for ``jobs`` together; kills the whole process group of any that overruns."""
  deadline = time.monotonic() + timeout
  pending = list(jobs)
  while pending:
    for job in [j for j in pending if j["proc"].poll() is not None]:
      job["rc"], job["end"] = job["proc"].returncode, time.time()
      pending.remove(job)
    if pending and time.monotonic() > deadline:
      for job in pending:
        os.killpg(job["proc"].pid, signal.SIGKILL)
        job["rc"], job["end"], job["timed_out"] = job["proc"].wait(), time.time(), True
      pending = []
    time.sleep(0.05)
  for job in jobs:
    job["log"].close()
    job["output"] = Path(job["log"].name).read_text()


def _ok(job: dict) -> dict:
  assert not job.get("timed_out"), f"run {job['name']} timed out:\n{job['output'][-3000:]}"
  assert job["rc"] == 0, f"run {job['name']} failed ({job['rc']}):\n{job['output'][-3000:]}"
  return job


@needs_gloo
def test_without_launcher_survivors_abort_at_the_heartbeat_timeout(runs):
  survivor, dead = runs["F0"], runs["F1"]
  assert dead["rc"] == -signal.SIGKILL, dead["output"][-3000:]
  killed_at = float(re.search(r"kills itself after step 2 at t=([\d.]+)", dead["output"])[1])
  assert not survivor.get("timed_out") and survivor["rc"] != 0, survivor["output"][-3000:]
  # Either the collective it waits in fails (gloo sees the connection reset, or,
  # when the peer died partway through sending, a message of the wrong size:
  # gloo::EnforceNotMet) or, if it is not waiting on the dead peer there, the
  # coordinator's heartbeat check.
  assert re.search(r"stopped sending heartbeats|Gloo .* failed|gloo::EnforceNotMet", survivor["output"]), \
      survivor["output"][-3000:]
  assert survivor["end"] - killed_at < HEARTBEAT_S + 10


def _config(**overrides):
  config = multihost_config.get_config()
  config.update(overrides)
  return config


def _flat(tree) -> dict:
  return {"/".join(mt.path_names(p)): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _one_device_mesh():
  return mt.make_mesh((1, 1), devices=jax.local_devices()[:1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  two = ["--processes", "2", *TRAIN]
  a = _start(tmp, "A", [*two, "--workdir", str(tmp / "a"), "--dump", str(tmp / "a.npz"),
                        "--summary", str(tmp / "a.json")])
  single = mt.train(_config(steps=STEPS, log_every=STEPS), _one_device_mesh())
  _finish([a], PHASE_TIMEOUT_S)
  c_args = [*two, "--workdir", str(tmp / "c"), "--dump", str(tmp / "c.npz"),
            "--summary", str(tmp / "c.json")]
  c = _start(tmp, "C", [*c_args, "--kill_process", "1", "--kill_after_step", str(KILL_AFTER)])
  e = _start(tmp, "E", ["--evaluate", "--config.mesh", "2,4", "--workdir", str(tmp / "a"),
                        "--dump", str(tmp / "e.npz"), "--summary", str(tmp / "e.json")],
             devices=8)
  _finish([c, e], PHASE_TIMEOUT_S)
  c["listing"] = sorted(os.listdir(tmp / "c")) if (tmp / "c").is_dir() else []
  d = _start(tmp, "D", c_args)
  coordinator = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num_processes", "2",
                 "--heartbeat_timeout", str(HEARTBEAT_S), "--kill_process", "1",
                 "--kill_after_step", "2", *TRAIN]
  f = [_start(tmp, f"F{i}", [*coordinator, "--process_id", str(i)], devices=4) for i in (0, 1)]
  _finish([d, *f], PHASE_TIMEOUT_S)
  return {"tmp": tmp, "A": a, "B": single, "C": c, "D": d, "E": e, "F0": f[0], "F1": f[1]}


def _load(path: Path) -> dict:
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _summary(path: Path) -> dict:
  import json
  return json.loads(path.read_text())


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
  scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
  return float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0)) / scale


@needs_gloo
def test_two_processes_match_one_process(runs):
  _ok(runs["A"])
  tmp = runs["tmp"]
  multi = _load(tmp / "a.npz")
  single = {k: np.asarray(v) for k, v in _flat(runs["B"]["state"]).items()}
  assert sorted(multi) == sorted(single)
  assert any(k.startswith("opt_state/") and "trace" in k for k in multi)  # ROOT momentum
  assert any(k.startswith("opt_state/") and "/nu/" in k for k in multi)   # AdamW moments
  for key in multi:
    assert multi[key].dtype == single[key].dtype, key
    assert _relative_difference(multi[key], single[key]) <= 1e-5, key
  summary = _summary(tmp / "a.json")
  assert summary["num_processes"] == 2 and summary["num_devices"] == 8
  assert summary["losses"][-1] < summary["losses"][0]  # it trained
  specs = summary["shardings"]
  assert summary["shardings_preserved"], specs
  assert specs["params/params/up/kernel"] == ["P(None, 'model')"] * 2
  sharded = [k for k, (inp, _) in specs.items() if "model" in inp]
  assert any(k.startswith("opt_state/") for k in sharded)  # momentum sharded like its param


@needs_gloo
def test_only_process_zero_prints(runs):
  output = _ok(runs["A"])["output"]
  assert output.count("step     8  loss") == 1
  assert output.count("final_loss") == 1


@needs_gloo
def test_dead_worker_stops_the_job_fast_and_relaunch_resumes(runs):
  c, d = runs["C"], _ok(runs["D"])
  tmp = runs["tmp"]
  assert not c.get("timed_out"), c["output"][-3000:]
  assert c["rc"] != 0
  assert re.search(r"worker 1 \(pid \d+\) was killed by SIGKILL", c["output"]), c["output"][-3000:]
  assert "job FAILED. Relaunch the same command to resume from step 4." in c["output"]
  killed_at = float(re.search(r"kills itself after step 8 at t=([\d.]+)", c["output"])[1])
  stopped_at = float(re.search(r"stopping \d+ surviving worker\(s\) at t=([\d.]+)", c["output"])[1])
  assert stopped_at - killed_at < 5.0
  assert c["end"] - killed_at < 15.0  # the launcher returned; nobody hung in a collective
  # Step 4 complete; step 8 was being written when the worker died.
  assert [n for n in c["listing"] if n.isdigit()] == ["4"]
  assert any(n.startswith("8" + TMP_SUFFIX) for n in c["listing"]), c["listing"]
  assert _summary(tmp / "c.json")["start_step"] == 4
  assert "resumed from the checkpoint of step 4" in d["output"]
  assert sorted(os.listdir(tmp / "c")) == ["4", "8"]
  resumed, uninterrupted = _load(tmp / "c.npz"), _load(tmp / "a.npz")
  assert sorted(resumed) == sorted(uninterrupted)
  for key in uninterrupted:
    np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)


def _restore_here(workdir: Path, **overrides):
  config = _config(steps=STEPS, checkpoint_every=EVERY, **overrides)
  mngr = checkpoint.manager(str(workdir), EVERY)
  try:
    return checkpoint.restore(mngr, mt.abstract_state(config, mt.make_task(config),
                                                      _one_device_mesh()))
  finally:
    mngr.close()


@needs_gloo
def test_restore_two_process_checkpoint_into_one_process(runs):
  _ok(runs["A"])
  step, state, data = _restore_here(runs["tmp"] / "a")
  assert step == STEPS and data["step"] == STEPS and data["examples_seen"] == STEPS * 64
  restored, saved = _flat(state), _load(runs["tmp"] / "a.npz")
  assert sorted(restored) == sorted(saved)
  for key, value in restored.items():
    assert value.sharding.mesh.shape == {"data": 1, "model": 1}
    np.testing.assert_array_equal(np.asarray(value), saved[key], err_msg=key)


@needs_gloo
def test_restore_into_another_mesh_shape(runs):
  e = _ok(runs["E"])
  summary = _summary(runs["tmp"] / "e.json")
  assert summary["mesh"] == {"data": 2, "model": 4} and summary["step"] == STEPS
  assert "eval_loss" in e["output"]
  restored, saved = _load(runs["tmp"] / "e.npz"), _load(runs["tmp"] / "a.npz")
  assert sorted(restored) == sorted(saved)
  for key in saved:
    np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)


@needs_gloo
def test_restore_into_a_different_model_names_the_mismatch(runs):
  _ok(runs["A"])
  with pytest.raises(ValueError) as error:
    _restore_here(runs["tmp"] / "a", hidden=48)
  message = str(error.value)
  assert "does not fit the model" in message
  assert "params/params/up/kernel: checkpoint (16, 32) float32, model (16, 48) float32" in message
  # root() default chain: gate (0), burst guard (1), momentum (2), ...
  assert "opt_state/inner_states/root/inner_state/1/trace/params/mid/kernel" in message
