r"""What crosses hosts in one training step: the collectives of the compiled step.

Compiles the step of `examples.multihost.train` for a mesh in ONE process with
as many CPU devices as the job would have in all, reads the collectives out of
the optimised HLO (with the trip counts of the loops they sit in), and says
which ones connect devices of different processes, given
``--devices_per_process`` (the mesh lists devices process by process, as
`jax.make_mesh` does). The model is ``--config`` (default
``configs/multihost.py``); the mesh is ``config.mesh``, 4,2 when unset::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python -m examples.multihost.cost --config.mesh 4,2 --devices_per_process 4
"""

from __future__ import annotations

import collections
import pathlib
import re

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import config_flags

from examples.common import runtime
from examples.multihost import train as mt

DEFAULT_MESH = "4,2"
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "configs" / "multihost.py"

_COLLECTIVE = re.compile(
    r"^\s*%\S+ = (?P<shape>.+?) (?P<kind>all-reduce|all-gather|reduce-scatter|all-to-all|"
    r"collective-permute)(?:-start)?\(")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(?P<name>[\w.\-]+) \(.*\{$")
_WHILE = re.compile(r" while\(.*body=%(?P<body>[\w.\-]+).*\"known_trip_count\":\{\"n\":\"(?P<n>\d+)\"")
_ARRAY = re.compile(r"(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
          "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


def _payload_bytes(shape: str) -> int:
  total = 0
  for m in _ARRAY.finditer(shape):
    dims = [int(d) for d in m["dims"].split(",") if d]
    total += _BYTES.get(m["dtype"], 4) * int(np.prod(dims, dtype=np.int64))
  return total


def _iota(spec: str) -> np.ndarray:
  """``[4,2]T(1,0)`` or ``[8]``: an iota reshaped and transposed, flattened."""
  m = re.match(r"\[([\d,]+)\](?:T\(([\d,]+)\))?", spec)
  dims = [int(d) for d in m[1].split(",")]
  ids = np.arange(int(np.prod(dims))).reshape(dims)
  if m[2]:
    ids = ids.transpose([int(p) for p in m[2].split(",")])
  return ids.reshape(-1)


def device_groups(line: str) -> list[list[int]]:
  """The device groups of one collective, in any of the HLO spellings."""
  if m := re.search(r"source_target_pairs=\{(.*?)\}\}", line):
    return [[int(a), int(b)] for a, b in re.findall(r"\{(\d+),(\d+)", m[1] + "}")]
  if m := re.search(r"replica_groups=\{(\{[\d,{}]*\})\}", line):
    return [[int(d) for d in g.split(",") if d] for g in re.findall(r"\{([\d,]*)\}", m[1])]
  if m := re.search(r"replica_groups=\[(\d+),(\d+)\]<=(\[[\d,]+\](?:T\([\d,]+\))?)", line):
    return _iota(m[3]).reshape(int(m[1]), int(m[2])).tolist()
  if m := re.search(r"replica_groups=mesh\[(.*?)\](.*?)\{([^}]*)\}", line):
    axes = re.findall(r"'(\w+)'=(\d+)", m[1])
    sizes = [int(s) for _, s in axes]
    ids = re.search(r"device_ids=\((\[[\d,]+\](?:T\([\d,]+\))?)\)", m[2])
    devices = (_iota(ids[1]) if ids else np.arange(int(np.prod(sizes)))).reshape(sizes)
    names = [n for n, _ in axes]
    along = [names.index(a) for a in re.findall(r"'(\w+)'", m[3])]
    moved = np.moveaxis(devices, along, list(range(len(sizes) - len(along), len(sizes))))
    return moved.reshape(-1, int(np.prod([sizes[a] for a in along]))).tolist()
  return []


def collectives(hlo: str) -> list[dict]:
  """Each collective of an HLO module with its executions per step (loop trip counts)."""
  parent, trips, current = {}, {}, None
  ops = []
  for line in hlo.splitlines():
    if m := _COMPUTATION.match(line):
      current = m["name"]
    elif m := _WHILE.search(line):
      parent[m["body"]], trips[m["body"]] = current, int(m["n"])
    elif m := _COLLECTIVE.match(line):
      ops.append({"kind": m["kind"], "bytes": _payload_bytes(m["shape"]),
                  "groups": device_groups(line), "computation": current})
  for op in ops:
    count, comp = 1, op["computation"]
    while comp in trips:
      count, comp = count * trips[comp], parent[comp]
    op["per_step"] = count
  return ops


def compiled_step_hlo(config: ml_collections.ConfigDict) -> str:
  mesh = mt.make_mesh(mt.parse_mesh(config.mesh))
  task = mt.make_task(config)
  abstract = mt.abstract_state(config, task, mesh)
  sharding = NamedSharding(mesh, P(mt.DATA_AXIS))
  batch = {"x": jax.ShapeDtypeStruct((config.global_batch, config.features), np.float32,
                                     sharding=sharding),
           "y": jax.ShapeDtypeStruct((config.global_batch,), np.int32, sharding=sharding)}
  step = mt.make_train_step(task, sharding, abstract)
  return step.lower(abstract, batch).compile().as_text()


def cost_table(ops: list[dict], devices_per_process: int) -> dict:
  """``{(kind, crosses hosts): [collectives per step, payload bytes per step]}``."""
  table = collections.defaultdict(lambda: [0, 0])
  for op in ops:
    crosses = any(len({d // devices_per_process for d in g}) > 1 for g in op["groups"])
    row = table[(op["kind"], crosses)]
    row[0] += op["per_step"]
    row[1] += op["per_step"] * op["bytes"]
  return dict(table)


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  runtime.default_to_cpu()
  config = flags.FLAGS.config
  config.mesh = config.mesh or DEFAULT_MESH
  devices_per_process = flags.FLAGS.devices_per_process
  table = cost_table(collectives(compiled_step_hlo(config)), devices_per_process)
  print(f"mesh (data, model) = {mt.parse_mesh(config.mesh)}, {jax.device_count()} devices, "
        f"{devices_per_process} per process")
  print(f"{'collective':20s} {'crosses hosts':>13s} {'per step':>9s} {'bytes/step':>11s}")
  for (kind, crosses), (count, nbytes) in sorted(table.items()):
    print(f"{kind:20s} {str(crosses):>13s} {count:9d} {nbytes:11d}")
  return 0


def _define_flags() -> None:
  """The command line's flags (defined only when run, so that importing this defines none)."""
  config_flags.DEFINE_config_file(
      "config", str(DEFAULT_CONFIG), "Training config file (the model; config.mesh, default 4,2).",
      lock_config=False)
  flags.DEFINE_integer("devices_per_process", 4, "Devices per process of the job being modelled.")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
