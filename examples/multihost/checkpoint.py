"""Orbax checkpoints of a sharded training state, restorable into any layout.

A checkpoint holds two items: ``state`` (the params and the full optimizer
state, saved shard by shard by every process) and ``data`` (the data position,
a small JSON record). Orbax writes each step under a temporary name and renames
it only once every process has finished writing, so a step that a dead worker
left half-written is never listed, never restored, and is overwritten when the
step is saved again.

Restoring takes an abstract target (``jax.ShapeDtypeStruct`` leaves carrying
the shardings wanted now): the same mesh, another mesh shape, or one process
with one device all read the same files. A target whose tree, shapes or dtypes
do not fit the checkpoint is refused with an error naming every mismatch.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

STATE = "state"
DATA = "data"


def manager(directory: str, save_every: int, *, max_to_keep: int = 3,
            asynchronous: bool = True) -> ocp.CheckpointManager:
  """A `CheckpointManager` that saves every ``save_every`` steps.

  Every process must build it with the same arguments; orbax coordinates the
  processes through `jax.distributed`.
  """
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=save_every, max_to_keep=max_to_keep,
      enable_async_checkpointing=asynchronous)
  handlers = {STATE: ocp.StandardCheckpointHandler(), DATA: ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data: dict, *,
         force: bool = False) -> bool:
  """Starts saving ``state`` and ``data`` as ``step`` (if due, or ``force``).

  Every process calls this with its shards of the same global ``state``.
  """
  return mngr.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state),
      DATA: ocp.args.JsonSave(data)}), force=force)


def abstract_like(tree: Any) -> Any:
  """``jax.ShapeDtypeStruct`` leaves (with their shardings) for a tree of arrays."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat_by_path(tree: Any) -> dict:
  """``{'a/b/0': leaf}``; NamedTuple fields and dict keys read alike."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _describe(leaf) -> str:
  return f"{tuple(leaf.shape)} {jax.numpy.dtype(leaf.dtype).name}"


def tree_mismatches(saved: Any, target: Any) -> list[str]:
  """Every difference in paths, shapes and dtypes between two trees of arrays."""
  saved, target = _flat_by_path(saved), _flat_by_path(target)
  problems = [f"{p}: in the checkpoint only" for p in sorted(saved.keys() - target.keys())]
  problems += [f"{p}: in the model only" for p in sorted(target.keys() - saved.keys())]
  for path in sorted(saved.keys() & target.keys()):
    a, b = saved[path], target[path]
    if tuple(a.shape) != tuple(b.shape) or jax.numpy.dtype(a.dtype) != jax.numpy.dtype(b.dtype):
      problems.append(f"{path}: checkpoint {_describe(a)}, model {_describe(b)}")
  return problems


def check_fits(mngr: ocp.CheckpointManager, step: int, target: Any) -> None:
  """Raises `ValueError` naming each leaf where ``target`` differs from the checkpoint."""
  saved = mngr.item_metadata(step)[STATE]
  problems = tree_mismatches(saved, target)
  if problems:
    listing = "\n  ".join(problems)
    raise ValueError(
        f"checkpoint {mngr.directory}/{step} does not fit the model "
        f"({len(problems)} mismatch(es)):\n  {listing}")


def restore(mngr: ocp.CheckpointManager, target: Any,
            step: Optional[int] = None) -> Optional[tuple[int, Any, dict]]:
  """Restores ``(step, state, data)`` into the layout of ``target``, or None.

  Args:
    mngr: The checkpoint manager.
    target: A tree like the saved state whose leaves carry shape, dtype and the
      sharding to restore into (arrays or ``jax.ShapeDtypeStruct``).
    step: The step to restore; default: the latest complete one.

  Returns:
    None if there is no complete checkpoint, else the step, the state (laid
    out like ``target``) and the data record.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  abstract = abstract_like(target)
  check_fits(mngr, step, abstract)
  restored = mngr.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(abstract),
      DATA: ocp.args.JsonRestore()}))
  return step, restored[STATE], restored[DATA]
