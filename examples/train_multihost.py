r"""Multi-host training with ROOT: one global mesh over every process's devices.

One machine (this script spawns the workers on loopback, each with 4 CPU
devices, joined by `jax.distributed` with gloo collectives, and waits)::

  python examples/train_multihost.py --processes 2 --workdir /tmp/root_multihost

A cluster: run the same script once per host. SLURM, Open MPI and TPU pods
are auto-detected with ``--cluster``; elsewhere name the coordinator::

  python examples/train_multihost.py --cluster --workdir /shared/ckpt
  python examples/train_multihost.py --coordinator 10.0.0.1:1234 \
      --num-processes 4 --process-id $RANK --workdir /shared/ckpt

One process, no `jax.distributed` (e.g. to evaluate a checkpoint)::

  python examples/train_multihost.py --evaluate --mesh 1,1 --workdir /tmp/root_multihost

Relaunching the same command resumes from the last complete checkpoint. If a
worker dies, the launcher stops the others at once and exits non-zero; without
the launcher, the survivors abort after ``--heartbeat-timeout`` seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from typing import Optional

PROG = "train_multihost"
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_LAUNCHER_FLAGS = ("--processes", "--devices-per-process", "--timeout")
_POLL_S = 0.05


# ---------------------------------------------------------------- launcher (no jax here)


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
  """Runs ``processes`` workers of this script on loopback; stops all if one fails.

  Returns:
    0 if every worker exited 0; otherwise the first failure's status (128 +
    signal number for a worker killed by a signal), or 124 on ``timeout``.
  """
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith(_DEVICE_COUNT_FLAG)]
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(flags + [f"{_DEVICE_COUNT_FLAG}={devices_per_process}"]))
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), *worker_argv, "--coordinator", coordinator,
       "--num-processes", str(processes), "--process-id", str(i)], env=env)
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


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  group = parser.add_argument_group("launcher (one machine)")
  group.add_argument("--processes", type=int, help="spawn this many workers on loopback")
  group.add_argument("--devices-per-process", type=int, default=4)
  group.add_argument("--timeout", type=float, help="stop every worker after this many seconds")
  group = parser.add_argument_group("worker")
  group.add_argument("--coordinator", help="host:port of process 0's coordinator")
  group.add_argument("--num-processes", type=int)
  group.add_argument("--process-id", type=int)
  group.add_argument("--cluster", action="store_true",
                     help="jax.distributed.initialize() with cluster auto-detection")
  group.add_argument("--heartbeat-timeout", type=int, default=10,
                     help="seconds of silence after which a process is declared dead")
  group = parser.add_argument_group("training")
  group.add_argument("--steps", type=int, default=40)
  group.add_argument("--global-batch", type=int, default=64)
  group.add_argument("--hidden", type=int, default=32)
  group.add_argument("--learning-rate", type=float, default=0.02)
  group.add_argument("--seed", type=int, default=0)
  group.add_argument("--mesh", help="data,model (-1: the remaining devices); default: "
                     "processes,devices-per-process")
  group.add_argument("--workdir", help="checkpoint directory")
  group.add_argument("--checkpoint-every", type=int, default=10)
  group.add_argument("--log-every", type=int, default=10)
  group.add_argument("--evaluate", action="store_true",
                     help="restore the latest checkpoint and evaluate it")
  group.add_argument("--summary", help="process 0 writes a JSON summary here")
  group.add_argument("--dump", help="process 0 writes the final state here (.npz)")
  group.add_argument("--kill-process", type=int, help="test hook: this process dies ...")
  group.add_argument("--kill-after-step", type=int, help="... right after this step")
  return parser


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


def _run_worker(args) -> None:
  # Imported here so that the launcher never loads jax (nor claims a device).
  import multihost_train as mt  # pylint: disable=import-outside-toplevel

  mt.join(args.coordinator, args.num_processes, args.process_id, cluster=args.cluster,
          heartbeat_timeout=args.heartbeat_timeout)
  config = mt.Config(
      steps=args.steps, global_batch=args.global_batch, hidden=args.hidden,
      learning_rate=args.learning_rate, seed=args.seed,
      mesh=tuple(int(v) for v in args.mesh.split(",")) if args.mesh else None,
      workdir=args.workdir,
      checkpoint_every=args.checkpoint_every, log_every=args.log_every)
  mesh = mt.make_mesh(config.mesh)
  if args.evaluate:
    summary = mt.evaluate(config, mesh)
  else:
    summary = mt.train(config, mesh, mt.Fault(args.kill_process, args.kill_after_step))
  mt.write_outputs(summary, mesh, args.summary, args.dump)


def main(argv: Optional[list[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = _parser().parse_args(argv)
  if args.processes is not None:
    return launch(args.processes, args.devices_per_process, worker_argv(argv),
                  args.workdir, args.timeout)
  try:
    _run_worker(args)
  except Exception:  # noqa: BLE001  (any failure must end this process, not hang it)
    traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip the orderly `jax.distributed` shutdown, which would wait for the
    # peers; they see this process vanish and abort at their heartbeat timeout.
    os._exit(1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
