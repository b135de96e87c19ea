"""Multi-host training with `examples/train_multihost.py`: 2 processes x 4 CPU devices.

The runs are real: each starts the script in its own processes (workers joined
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

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPT = str(EXAMPLES / "train_multihost.py")
STEPS, EVERY, KILL_AFTER = 8, 4, 8
# Mesh 4x2 puts the data axis across both processes and makes XLA move Newton-Schulz
# work across them too (see docs/multihost.md): the most cross-host traffic.
TRAIN = ["--steps", str(STEPS), "--checkpoint-every", str(EVERY), "--log-every", "4",
         "--mesh", "4,2"]
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
  proc = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=log, stderr=subprocess.STDOUT,
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
  # Either the collective it waits in fails (gloo sees the connection reset) or,
  # if it is not waiting on the dead peer there, the coordinator's heartbeat check.
  assert re.search(r"stopped sending heartbeats|Gloo .* failed", survivor["output"]), \
      survivor["output"][-3000:]
  assert survivor["end"] - killed_at < HEARTBEAT_S + 10


def _example_module():
  if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
  import multihost_train
  return multihost_train


def _flat(tree) -> dict:
  mt = _example_module()
  return {"/".join(mt.path_names(p)): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _one_device_mesh():
  return _example_module().make_mesh((1, 1), devices=jax.local_devices()[:1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("multihost")
  two = ["--processes", "2", *TRAIN]
  a = _start(tmp, "A", [*two, "--workdir", str(tmp / "a"), "--dump", str(tmp / "a.npz"),
                        "--summary", str(tmp / "a.json")])
  mt = _example_module()
  single = mt.train(mt.Config(steps=STEPS, log_every=STEPS), _one_device_mesh())
  _finish([a], PHASE_TIMEOUT_S)
  c_args = [*two, "--workdir", str(tmp / "c"), "--dump", str(tmp / "c.npz"),
            "--summary", str(tmp / "c.json")]
  c = _start(tmp, "C", [*c_args, "--kill-process", "1", "--kill-after-step", str(KILL_AFTER)])
  e = _start(tmp, "E", ["--evaluate", "--mesh", "2,4", "--workdir", str(tmp / "a"),
                        "--dump", str(tmp / "e.npz"), "--summary", str(tmp / "e.json")],
             devices=8)
  _finish([c, e], PHASE_TIMEOUT_S)
  c["listing"] = sorted(os.listdir(tmp / "c")) if (tmp / "c").is_dir() else []
  d = _start(tmp, "D", c_args)
  coordinator = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                 "--heartbeat-timeout", str(HEARTBEAT_S), "--kill-process", "1",
                 "--kill-after-step", "2", *TRAIN]
  f = [_start(tmp, f"F{i}", [*coordinator, "--process-id", str(i)], devices=4) for i in (0, 1)]
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
  mt = _example_module()
  config = mt.Config(steps=STEPS, checkpoint_every=EVERY, **overrides)
  mngr = mt.checkpoint.manager(str(workdir), EVERY)
  try:
    return mt.checkpoint.restore(mngr, mt.abstract_state(config, mt.make_task(config),
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
  assert "opt_state/inner_states/root/inner_state/2/trace/params/mid/kernel" in message


def test_tree_mismatches_lists_missing_extra_and_dtype():
  mt = _example_module()
  saved = {"w": np.zeros((2, 3), np.float32), "old": np.zeros(1, np.float32)}
  target = {"w": jax.ShapeDtypeStruct((2, 3), np.dtype("bfloat16")),
            "new": jax.ShapeDtypeStruct((1,), np.float32)}
  assert mt.checkpoint.tree_mismatches(saved, target) == [
      "old: in the checkpoint only", "new: in the model only",
      "w: checkpoint (2, 3) float32, model (2, 3) bfloat16"]
  assert mt.checkpoint.tree_mismatches(saved, saved) == []


def test_data_record_of_another_stream_is_refused():
  mt = _example_module()
  config = mt.Config(global_batch=64, seed=0)
  mt.check_data_record(config, {"step": 4, "global_batch": 64, "seed": 0})
  with pytest.raises(ValueError, match="global_batch=32"):
    mt.check_data_record(config, {"step": 4, "global_batch": 32, "seed": 0})


def _cost_module():
  _example_module()
  import multihost_cost
  return multihost_cost


@pytest.mark.parametrize("line, groups", [
    ("replica_groups={{0,1},{2,3}}, use_global_device_ids=true", [[0, 1], [2, 3]]),
    ("replica_groups=[2,4]<=[4,2]T(1,0), dimensions={1}", [[0, 2, 4, 6], [1, 3, 5, 7]]),
    ("replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=1,'axis_3'=4], "
     "device_ids=([4,2]T(1,0)) {'axis_1'}, use_global_device_ids=true",
     [[0, 1], [2, 3], [4, 5], [6, 7]]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2] {'axis_0'}, to_apply=%add",
     [[0, 2, 4, 6], [1, 3, 5, 7]]),
    ("source_target_pairs={{0,0},{2,1},{4,2}}, metadata={}", [[0, 0], [2, 1], [4, 2]]),
])
def test_cost_model_reads_every_spelling_of_device_groups(line, groups):
  assert _cost_module().device_groups(line) == groups


def test_cost_model_counts_loop_trips_and_host_crossings():
  hlo = "\n".join([
      "%body.1 (p: s32[]) -> s32[] {",
      "  %all-reduce.1 = s32[1]{0} all-reduce(%x), replica_groups={{0,1},{2,3}}, to_apply=%a",
      "}",
      "ENTRY %main.2 (p: f32[16,32]) -> f32[16,32] {",
      '  %while.3 = (s32[]) while(%t), condition=%cond.1, body=%body.1, '
      'backend_config={"known_trip_count":{"n":"31"}}',
      "  %all-reduce.2 = f32[16,32]{1,0} all-reduce(%g), replica_groups={{0,2},{1,3}}, "
      "to_apply=%a",
      "}"])
  cost = _cost_module()
  ops = cost.collectives(hlo)
  assert [op["per_step"] for op in ops] == [31, 1]
  assert cost.cost_table(ops, devices_per_process=2) == {
      ("all-reduce", False): [31, 31 * 4], ("all-reduce", True): [1, 16 * 32 * 4]}
