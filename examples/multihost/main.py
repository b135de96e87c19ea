r"""Multi-host training with ROOT: one global mesh over every process's devices.

One machine (this program spawns the workers on loopback, each with 4 CPU
devices, joined by `jax.distributed` with gloo collectives, and waits)::

  python -m examples.multihost.main --processes 2 --workdir /tmp/root_multihost

A cluster: run the same program once per host. SLURM, Open MPI and TPU pods
are auto-detected with ``--cluster``; elsewhere name the coordinator::

  python -m examples.multihost.main --cluster --workdir /shared/ckpt
  python -m examples.multihost.main --coordinator 10.0.0.1:1234 \
      --num_processes 4 --process_id $RANK --workdir /shared/ckpt

One process, no `jax.distributed` (e.g. to evaluate a checkpoint)::

  python -m examples.multihost.main --evaluate --config.mesh 1,1 --workdir /tmp/root_multihost

What is trained (``--config``, default ``configs/multihost.py``; e.g.
``--config.steps 8 --config.mesh 4,2``): `examples.multihost.train`.
Relaunching the same command resumes from the last complete checkpoint in
``--workdir``. If a worker dies, the launcher stops the others at once and
exits non-zero; without the launcher, the survivors abort after
``--heartbeat_timeout`` seconds.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Optional

from absl import app
from absl import flags
from ml_collections import config_flags

# No jax here: the launcher must not load it (nor claim a device).

PROG = "multihost"
REPO = pathlib.Path(__file__).resolve().parents[2]
WORKER_MODULE = "examples.multihost.main"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_LAUNCHER_FLAGS = ("--processes", "--devices_per_process", "--timeout")
_POLL_S = 0.05

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(REPO / "configs" / "multihost.py"), "Training config file.", lock_config=False)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoint directory (none: no checkpoints).")
# Launcher (one machine).
_PROCESSES = flags.DEFINE_integer("processes", None, "Spawn this many workers on loopback.")
_DEVICES_PER_PROCESS = flags.DEFINE_integer("devices_per_process", 4, "CPU devices per worker.")
_TIMEOUT = flags.DEFINE_float("timeout", None, "Stop every worker after this many seconds.")
# Worker.
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CLUSTER = flags.DEFINE_bool(
    "cluster", False, "jax.distributed.initialize() with cluster auto-detection.")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 10, "Seconds of silence after which a process is declared dead.")
# What to run and write.
_EVALUATE = flags.DEFINE_bool("evaluate", False, "Restore the latest checkpoint and evaluate it.")
_SUMMARY = flags.DEFINE_string("summary", None, "Process 0 writes a JSON summary here.")
_DUMP = flags.DEFINE_string("dump", None, "Process 0 writes the final state here (.npz).")
_KILL_PROCESS = flags.DEFINE_integer("kill_process", None, "Test hook: this process dies ...")
_KILL_AFTER_STEP = flags.DEFINE_integer("kill_after_step", None, "... right after this step.")


# ---------------------------------------------------------------- launcher


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def complete_steps(workdir: Optional[str]) -> list[int]:
  """Finalised checkpoint steps: orbax renames a step to its number when complete."""
  if not workdir or not os.path.isdir(workdir):
    return []
  return sorted(int(n) for n in os.listdir(workdir) if n.isdigit())


def _exit_description(code: int) -> str:
  if code < 0:
    return f"was killed by {signal.Signals(-code).name}"
  return f"exited with status {code}"


def _stop(procs: list) -> None:
  """SIGKILLs every worker still running.

  Not SIGTERM: jax takes it as a preemption notice and the worker goes on
  waiting in its collective. Nothing is lost that the last complete
  checkpoint does not have.
  """
  for p in procs:
    if p.poll() is None:
      p.kill()
  for p in procs:
    p.wait()


def _report_failure(procs: list, codes: list, workdir: Optional[str]) -> int:
  failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
  for i, code in failed:
    print(f"{PROG}: worker {i} (pid {procs[i].pid}) {_exit_description(code)}", flush=True)
  print(f"{PROG}: stopping {sum(c is None for c in codes)} surviving worker(s) "
        f"at t={time.time():.3f}", flush=True)
  _stop(procs)
  steps = complete_steps(workdir)
  where = f"step {steps[-1]}" if steps else "the start (no complete checkpoint)"
  print(f"{PROG}: job FAILED. Relaunch the same command to resume from {where}.", flush=True)
  code = failed[0][1]
  return code if code > 0 else 128 - code


def launch(processes: int, devices_per_process: int, worker_argv: list[str],
           workdir: Optional[str] = None, timeout: Optional[float] = None) -> int:
  """Runs ``processes`` workers of this program on loopback; stops all if one fails.

  Returns:
    0 if every worker exited 0; otherwise the first failure's status (128 +
    signal number for a worker killed by a signal), or 124 on ``timeout``.
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith(_DEVICE_COUNT_FLAG)]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(flags + [f"{_DEVICE_COUNT_FLAG}={devices_per_process}"]))
  coordinator = f"127.0.0.1:{_free_port()}"
  # `python -m` finds `examples` through PYTHONPATH; the cwd stays the caller's,
  # so relative paths (--workdir, --config) mean the same in every worker.
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  procs = [subprocess.Popen(
      [sys.executable, "-m", WORKER_MODULE, *worker_argv, "--coordinator", coordinator,
       "--num_processes", str(processes), "--process_id", str(i)], env=env)
      for i in range(processes)]
  print(f"{PROG}: launched {processes} workers (pids {[p.pid for p in procs]}) x "
        f"{devices_per_process} devices, coordinator {coordinator}", flush=True)
  deadline = None if timeout is None else time.monotonic() + timeout
  try:
    while True:
      codes = [p.poll() for p in procs]
      if any(c not in (None, 0) for c in codes):
        return _report_failure(procs, codes, workdir)
      if all(c == 0 for c in codes):
        return 0
      if deadline is not None and time.monotonic() > deadline:
        print(f"{PROG}: job FAILED: timed out after {timeout} s; stopping all workers", flush=True)
        _stop(procs)
        return 124
      time.sleep(_POLL_S)
  except KeyboardInterrupt:
    _stop(procs)
    raise


# ---------------------------------------------------------------- command line


def worker_argv(argv: list[str]) -> list[str]:
  """``argv`` without the launcher's own flags."""
  out, skip = [], False
  for arg in argv:
    if skip:
      skip = False
    elif arg in _LAUNCHER_FLAGS:
      skip = True
    elif not arg.startswith(tuple(f + "=" for f in _LAUNCHER_FLAGS)):
      out.append(arg)
  return out


def _run_worker() -> None:
  # Imported here so that the launcher never loads jax (nor claims a device).
  from examples.common import runtime  # pylint: disable=import-outside-toplevel
  from examples.multihost import train  # pylint: disable=import-outside-toplevel

  runtime.default_to_cpu()
  train.join(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
             cluster=_CLUSTER.value, heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
  config, workdir = _CONFIG.value, _WORKDIR.value
  mesh = train.make_mesh(train.parse_mesh(config.mesh))
  if _EVALUATE.value:
    summary = train.evaluate(config, mesh, workdir)
  else:
    fault = train.Fault(_KILL_PROCESS.value, _KILL_AFTER_STEP.value)
    summary = train.train(config, mesh, workdir, fault)
  train.write_outputs(summary, mesh, _SUMMARY.value, _DUMP.value)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _PROCESSES.value is not None:
    return launch(_PROCESSES.value, _DEVICES_PER_PROCESS.value, worker_argv(sys.argv[1:]),
                  _WORKDIR.value, _TIMEOUT.value)
  try:
    _run_worker()
  except Exception:  # noqa: BLE001  (any failure must end this process, not hang it)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the orderly `jax.distributed` shutdown, which would wait for the
    # peers; they see this process vanish and abort at their heartbeat timeout.
    os._exit(1)
  return 0


if __name__ == "__main__":
  app.run(main)
