"""The worker of `examples/multihost/main.py`: a Flax MLP trained with `root_optax.root` on a global mesh.

Every process runs this same program on global arrays. What each one does:

1. join `jax.distributed` (`join`), so that ``jax.devices()`` lists every
   process's devices;
2. build one ``(data, model)`` mesh over all of them (`make_mesh`);
3. create or restore the state with the same shardings everywhere: params
   split over ``model``, optimizer leaves like the param they track;
4. read only its own rows of each global batch (`global_batch`);
5. call the same jitted step and the same checkpoint saves, in the same order.

Nothing in the step depends on which process runs it; only printing does.
The config is ``configs/multihost.py``; ``workdir`` is the checkpoint
directory (None: no checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import root_optax
from examples.common import data
from examples.common import models
from examples.multihost import checkpoint

DATA_AXIS, MODEL_AXIS = "data", "model"
PROG = "multihost"


# Column-parallel `up`, row-parallel `mid`: one all-reduce over `model` per layer pair.
PARAM_SPECS = {"params": {
    "up": {"kernel": P(None, MODEL_AXIS), "bias": P(MODEL_AXIS)},
    "mid": {"kernel": P(MODEL_AXIS, None), "bias": P()},
    "head": {"kernel": P(), "bias": P()},
}}


class TrainState(NamedTuple):
  """Everything a step changes: params and the full ROOT optimizer state."""

  params: Any
  opt_state: Any


class Task(NamedTuple):
  """The model and the optimizer, built once per process."""

  model: nn.Module
  tx: optax.GradientTransformation


def make_task(config: ml_collections.ConfigDict) -> Task:
  return Task(models.MLP(config.hidden, config.classes), root_optax.root(config.learning_rate))


# ---------------------------------------------------------------- processes and mesh


def join(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
         process_id: Optional[int] = None, *, cluster: bool = False,
         heartbeat_timeout: int = 10) -> None:
  """Joins `jax.distributed`: explicitly, by cluster auto-detection, or not at all.

  A process that stops sending heartbeats for ``heartbeat_timeout`` seconds
  is declared dead and every other process aborts (instead of waiting in a
  collective forever).
  """
  if coordinator is None and not cluster:
    return
  # CPU collectives across processes (a no-op for GPU and TPU backends).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(heartbeat_timeout_seconds=heartbeat_timeout,
                shutdown_timeout_seconds=heartbeat_timeout,
                initialization_timeout=6 * heartbeat_timeout)
  if coordinator is not None:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator needs --num_processes and --process_id")
    kwargs.update(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
  jax.distributed.initialize(**kwargs)


def parse_mesh(text: str) -> Optional[tuple[int, int]]:
  """``'4,2'`` -> ``(4, 2)``; ``''`` -> None (one data row per process)."""
  return tuple(int(v) for v in text.split(",")) if text else None


def make_mesh(shape: Optional[tuple[int, int]], devices=None) -> jax.sharding.Mesh:
  """A ``(data, model)`` mesh over ``devices`` (default: every process's devices)."""
  devices = jax.devices() if devices is None else devices
  data_size, model_size = shape or (jax.process_count(), jax.local_device_count())
  if data_size == -1:
    data_size = len(devices) // model_size
  if data_size * model_size != len(devices):
    raise ValueError(f"mesh {shape} needs {data_size * model_size} devices; "
                     f"there are {len(devices)}")
  # Auto axes: shardings are given to `jax.jit` and propagated by XLA.
  return jax.make_mesh((data_size, model_size), (DATA_AXIS, MODEL_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


# ---------------------------------------------------------------- data


def load_rows(config: ml_collections.ConfigDict, rows: range) -> dict:
  """The examples at global positions ``rows`` of the data stream (`data.teacher_rows`)."""
  return data.teacher_rows(config.seed, config.features, config.classes, rows)


def _local_rows(sharding: NamedSharding, global_shape: tuple) -> range:
  """The rows of a global batch that this process's devices hold."""
  index = sharding.addressable_devices_indices_map(global_shape).values()
  starts = [s[0].start or 0 for s in index]
  stops = [global_shape[0] if s[0].stop is None else s[0].stop for s in index]
  return range(min(starts), max(stops))


def global_batch(config: ml_collections.ConfigDict, step: int, sharding: NamedSharding) -> dict:
  """Batch ``step`` as global arrays; this process reads only its own rows."""
  shapes = {"x": (config.global_batch, config.features), "y": (config.global_batch,)}
  rows = _local_rows(sharding, shapes["x"])
  first = step * config.global_batch
  local = load_rows(config, range(first + rows.start, first + rows.stop))
  return {k: jax.make_array_from_process_local_data(sharding, v, shapes[k])
          for k, v in local.items()}


# ---------------------------------------------------------------- state and step


def path_names(path) -> tuple:
  """A key path as plain names: dict keys, NamedTuple fields and indices alike."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def state_shardings(abstract: TrainState, mesh: jax.sharding.Mesh) -> TrainState:
  """Params by `PARAM_SPECS`; optimizer leaves like the param they track; rest replicated.

  An optimizer leaf tracks a param when its key path ends with the param's
  path and it has the param's shape (ROOT momentum, AdamW moments).
  """
  param_specs = {path_names(p): (s, leaf.shape) for (p, s), (_, leaf) in zip(
      jax.tree_util.tree_flatten_with_path(PARAM_SPECS)[0],
      jax.tree_util.tree_flatten_with_path(abstract.params)[0])}

  def spec_for(path, leaf):
    names = path_names(path)
    for param_path, (spec, shape) in param_specs.items():
      if names[-len(param_path):] == param_path and leaf.shape == shape:
        return NamedSharding(mesh, spec)
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(spec_for, abstract)


def _init_fn(config: ml_collections.ConfigDict, task: Task):
  def init(key):
    params = task.model.init(key, jnp.zeros((1, config.features)))
    return TrainState(params, task.tx.init(params))
  return init


def abstract_state(config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the train state, computing nothing."""
  shapes = jax.eval_shape(_init_fn(config, task), jax.random.key(config.seed))
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      shapes, state_shardings(shapes, mesh))


def init_state(config: ml_collections.ConfigDict, task: Task, abstract: TrainState) -> TrainState:
  """Fresh params and optimizer state, each process computing only its shards."""
  out = jax.tree.map(lambda s: s.sharding, abstract)
  return jax.jit(_init_fn(config, task), out_shardings=out)(jax.random.key(config.seed))


def make_train_step(task: Task, batch_sharding: NamedSharding, abstract: TrainState):
  """The jitted global step. Output shardings are left to XLA (and checked)."""

  def loss_fn(params, batch):
    logits = task.model.apply(params, batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

  def step(state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    updates, opt_state = task.tx.update(grads, state.opt_state, state.params)
    return TrainState(optax.apply_updates(state.params, updates), opt_state), loss

  shardings = jax.tree.map(lambda s: s.sharding, abstract)
  return jax.jit(step, in_shardings=(shardings, {"x": batch_sharding, "y": batch_sharding}),
                 donate_argnums=0)


def sharding_report(before: Any, after: Any) -> tuple[dict, bool]:
  """``{path: [input spec, output spec]}`` per leaf, and whether all are equivalent."""
  report, same = {}, True
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after)):
    report["/".join(path_names(path))] = [str(a.sharding.spec), str(b.sharding.spec)]
    same &= a.sharding.is_equivalent_to(b.sharding, len(a.shape))
  return report, same


# ---------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class Fault:
  """Test hook: process ``process`` SIGKILLs itself right after step ``after_step``.

  If that step is a checkpoint step, it dies while the save is still being
  written, which leaves a half-written checkpoint behind.
  """

  process: Optional[int] = None
  after_step: Optional[int] = None

  def maybe_die(self, step: int) -> None:
    if self.process == jax.process_index() and self.after_step == step:
      print(f"{PROG}: fault injection: process {self.process} kills itself after step {step} "
            f"at t={time.time():.3f}", flush=True)
      os.kill(os.getpid(), signal.SIGKILL)


def _data_record(config: ml_collections.ConfigDict, step: int) -> dict:
  """The data position: where the stream continues after ``step`` steps."""
  return {"step": step, "examples_seen": step * config.global_batch,
          "global_batch": config.global_batch, "seed": config.seed}


def check_data_record(config: ml_collections.ConfigDict, record: dict) -> None:
  """Refuses to resume a data stream other than the one the checkpoint was on."""
  for key in ("global_batch", "seed"):
    if record[key] != getattr(config, key):
      raise ValueError(
          f"the checkpoint was written with {key}={record[key]}, this run has "
          f"{key}={getattr(config, key)}: the data stream would not continue where it stopped")


def _as_state(state) -> TrainState:
  return TrainState(**state) if isinstance(state, dict) else state


def _resume_or_init(config: ml_collections.ConfigDict, task: Task, mngr, abstract: TrainState):
  restored = checkpoint.restore(mngr, abstract) if mngr else None
  if restored is None:
    return 0, init_state(config, task, abstract)
  _, state, record = restored
  check_data_record(config, record)
  return record["step"], _as_state(state)


def _due(config: ml_collections.ConfigDict, step: int) -> bool:
  return step % config.checkpoint_every == 0 or step == config.steps


def train(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
          workdir: Optional[str] = None, fault: Fault = Fault()) -> dict:
  """Trains up to ``config.steps`` steps, resuming from ``workdir`` (None: no checkpoints).

  Returns:
    A summary: first and last step, the losses, the mesh, the shardings of
    the state before and after the first step, and the final ``state``.
  """
  lead = jax.process_index() == 0
  task = make_task(config)
  abstract = abstract_state(config, task, mesh)
  batch_sharding = NamedSharding(mesh, P(DATA_AXIS))
  mngr = checkpoint.manager(workdir, config.checkpoint_every) if workdir else None
  start, state = _resume_or_init(config, task, mngr, abstract)
  if lead and start:
    print(f"{PROG}: resumed from the checkpoint of step {start} in {workdir}", flush=True)
  train_step = make_train_step(task, batch_sharding, abstract)
  losses, report, preserved = [], None, True
  bar = tqdm.tqdm(range(start, config.steps), initial=start, total=config.steps,
                  disable=not lead, desc=PROG, file=sys.stdout)
  for step in bar:
    before = checkpoint.abstract_like(state) if report is None else None
    state, loss = train_step(state, global_batch(config, step, batch_sharding))
    if report is None:
      report, preserved = sharding_report(before, state)
    losses.append(loss)
    if lead and (step + 1) % config.log_every == 0:
      bar.write(f"step {step + 1:5d}  loss {float(loss):.5f}")  # replicated: a local read
    if mngr and _due(config, step + 1):
      checkpoint.save(mngr, step + 1, state, _data_record(config, step + 1), force=True)
    fault.maybe_die(step + 1)
  bar.close()
  if mngr:
    mngr.wait_until_finished()
    mngr.close()
  return {"start_step": start, "final_step": config.steps, "losses": [float(l) for l in losses],
          "num_processes": jax.process_count(), "num_devices": jax.device_count(),
          "mesh": dict(mesh.shape), "shardings": report, "shardings_preserved": preserved,
          "state": state}


def evaluate(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
             workdir: Optional[str]) -> dict:
  """Restores the latest checkpoint in ``workdir`` into ``mesh`` and scores it on unseen examples."""
  if not workdir:
    raise ValueError("--evaluate needs --workdir")
  task = make_task(config)
  mngr = checkpoint.manager(workdir, config.checkpoint_every)
  try:
    restored = checkpoint.restore(mngr, abstract_state(config, task, mesh))
  finally:
    mngr.close()
  if restored is None:
    raise FileNotFoundError(f"no complete checkpoint in {workdir}")
  step, state, _ = restored
  state = _as_state(state)
  held_out = 10**9  # stream positions far past anything trained on
  rows = load_rows(config, range(held_out, held_out + 4 * config.global_batch))
  replicated = NamedSharding(mesh, P())  # every process passes the same rows
  batch = {k: jax.make_array_from_process_local_data(replicated, v) for k, v in rows.items()}

  @jax.jit
  def scores(params, batch):
    logits = task.model.apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == batch["y"])

  loss, accuracy = scores(state.params, batch)
  return {"step": step, "eval_loss": float(loss), "eval_accuracy": float(accuracy),
          "num_processes": jax.process_count(), "mesh": dict(mesh.shape), "state": state}


# ---------------------------------------------------------------- outputs


def gather_numpy(tree, mesh: jax.sharding.Mesh) -> dict:
  """The whole of a global tree on every process, as ``{path: np.ndarray}``.

  A collective (one all-gather program for the whole tree): every process
  must call it. For reporting only.
  """
  replicated = jax.jit(lambda t: t, out_shardings=NamedSharding(mesh, P()))(tree)
  return {"/".join(path_names(p)): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(replicated)[0]}


def write_outputs(summary: dict, mesh: jax.sharding.Mesh, summary_path: Optional[str],
                  dump_path: Optional[str]) -> None:
  """Process 0 prints the summary and writes it (JSON) and the final state (.npz)."""
  state = summary.pop("state")
  arrays = gather_numpy(state, mesh) if dump_path else None
  if jax.process_index() != 0:
    return
  if dump_path:
    np.savez(dump_path, **arrays)
  if summary_path:
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=1)
  shown = {k: v for k, v in summary.items() if k not in ("losses", "shardings")}
  if summary.get("losses"):
    shown["final_loss"] = round(summary["losses"][-1], 6)
  for key, value in shown.items():
    print(f"  {key:20s} {value}")
