"""Optimizer step time on a device mesh: ROOT sharded path vs XLA default vs optax Muon.

One process, one mesh (8 CPU host devices unless accelerators are present),
one GPT-shaped tree of transformer blocks (default 12 layers, d = 768: per
layer q, k, v, o of d x d, MLP d x 4d and 4d x d, two norm vectors; the
embedding and head go to AdamW in every variant and are left out). All
three variants run with the same weight decay, RMS scaling, AdamW b2 and
epsilon (`MATCHED`, root()'s defaults). Each variant's jitted step (update + apply, gradients given) is timed
interleaved with the others, and the median over repeats is reported with
its ratio to the XLA-default variant, plus the collectives of the compiled
step (count and bytes received per device).

  python benchmarks/sharding.py            # 12 x 768, 5 repeats
  python benchmarks/sharding.py --quick    # 1 x 64, 2 repeats: a smoke run
  python benchmarks/sharding.py --json out.json
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import root_optax  # noqa: E402

import _trees  # noqa: E402
import hlo_stats  # noqa: E402

# Every variant gets the arguments whose defaults differ between `root()` and
# `optax.contrib.muon`, at root()'s values, so that the variants differ only in
# ROOT's stages and where Newton-Schulz runs.
MATCHED = _trees.MATCHED

# name: (shape as a function of d, 'col' / 'row' / 'vec' under tensor parallelism)
BLOCK = {
    "attn_q": (lambda d: (d, d), "col"),
    "attn_k": (lambda d: (d, d), "col"),
    "attn_v": (lambda d: (d, d), "col"),
    "attn_o": (lambda d: (d, d), "row"),
    "mlp_in": (lambda d: (d, 4 * d), "col"),
    "mlp_out": (lambda d: (4 * d, d), "row"),
    "ln_1": (lambda d: (d,), "vec"),
    "ln_2": (lambda d: (d,), "vec"),
}


def gpt_tree(layers: int, d: int, key):
  """Random parameters of ``layers`` transformer blocks of width ``d``."""
  names = [(f"h{i}", name) for i in range(layers) for name in BLOCK]
  keys = jax.random.split(key, len(names))
  tree = {}
  for (layer, name), k in zip(names, keys):
    tree.setdefault(layer, {})[name] = 0.02 * jax.random.normal(k, BLOCK[name][0](d))
  return tree


def layout_spec(kind: str, layout: str, axes: tuple[str, ...]) -> P:
  """FSDP: rows over every mesh axis. TP: Megatron columns/rows over the last axis."""
  if kind == "vec":
    return P()
  if layout == "fsdp":
    return P(axes, None)
  tp, rest = axes[-1], (axes[:-1] or None)
  return P(rest, tp) if kind == "col" else P(tp, rest)


def shard_tree(tree, mesh, layout):
  def put(path, x):
    kind = BLOCK[path[-1].key][1]
    sharding = NamedSharding(mesh, layout_spec(kind, layout, mesh.axis_names))
    return jax.device_put(x, sharding)
  return jax.tree_util.tree_map_with_path(put, tree)


def optimizers(mesh) -> dict[str, optax.GradientTransformation]:
  return {
      "xla_default": root_optax.root(1e-3, **MATCHED),
      "sharded": root_optax.root(1e-3, sharding=mesh, **MATCHED),
      "optax_muon": optax.contrib.muon(1e-3, **MATCHED),
  }


def make_step(tx, params, state, wrap_auto_axes: bool):
  """A jitted step, optionally traced with Auto axes (`jax.sharding.auto_axes`).

  Under Explicit axes `root()` switches to Auto axes itself where it needs
  to; optax's Muon does not, so it is wrapped whole, with every output given
  its input's sharding.
  """
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  if wrap_auto_axes:
    shardings = jax.tree.map(lambda x: x.sharding, (params, state))
    step = jax.sharding.auto_axes(step, out_sharding=shardings)
  return jax.jit(step, donate_argnums=(0, 1))


def _commit_to_mesh(state, mesh):
  """Replicates state that `init` left on one device (counts), as jit returns it."""
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(
      lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
      state)


def run(layers: int, d: int, repeats: int, layout: str, mesh_shape, axis_type: str):
  """Times each variant; returns a dict of results."""
  types = AxisType.Explicit if axis_type == "explicit" else AxisType.Auto
  mesh = jax.make_mesh(mesh_shape, ("data", "model")[-len(mesh_shape):], axis_types=(types,) * len(mesh_shape))
  # On the host: every variant gets fresh device buffers, as the steps donate them.
  base = jax.tree.map(np.asarray, gpt_tree(layers, d, jax.random.key(0)))
  grads = shard_tree(jax.tree.map(lambda x: 50.0 * x, gpt_tree(layers, d, jax.random.key(1))), mesh, layout)
  variants = {}
  for name, tx in optimizers(mesh).items():
    params = shard_tree(base, mesh, layout)
    state = _commit_to_mesh(tx.init(params), mesh)
    step = make_step(tx, params, state, types == AxisType.Explicit and name == "optax_muon")
    start = time.perf_counter()
    compiled = step.lower(params, state, grads).compile()
    compile_s = time.perf_counter() - start
    params, state = compiled(params, state, grads)  # warm-up
    jax.block_until_ready(params)
    variants[name] = {"compiled": compiled, "params": params, "state": state, "times": [],
                      "compile_s": compile_s,
                      "collectives": hlo_stats.collective_stats(compiled.as_text())}
  for _ in range(repeats):
    for v in variants.values():
      start = time.perf_counter()
      v["params"], v["state"] = v["compiled"](v["params"], v["state"], grads)
      jax.block_until_ready(v["params"])
      v["times"].append(time.perf_counter() - start)
  base_time = statistics.median(variants["xla_default"]["times"])
  return {
      "devices": len(jax.devices()), "platform": jax.devices()[0].platform,
      "mesh": dict(zip(mesh.axis_names, mesh.axis_sizes)), "axis_type": axis_type,
      "layout": layout, "layers": layers, "d_model": d, "repeats": repeats,
      "variants": {
          name: {"median_s": statistics.median(v["times"]), "times_s": v["times"],
                 "ratio_to_xla_default": statistics.median(v["times"]) / base_time,
                 "compile_s": v["compile_s"],
                 "collectives": {op: {"count": c, "bytes": b} for op, (c, b) in v["collectives"].items()}}
          for name, v in variants.items()},
  }


def _print_table(result):
  print(f"{result['layers']} layers, d={result['d_model']}, mesh {result['mesh']} "
        f"({result['axis_type']} axes, {result['layout']}), {result['platform']}, "
        f"median of {result['repeats']}")
  print(f"{'variant':<12} {'median s':>9} {'ratio':>7} {'compile s':>10}  collectives (count, MB/device)")
  for name, v in result["variants"].items():
    coll = ", ".join(f"{op} {c['count']} {c['bytes'] / 1e6:.1f}" for op, c in v["collectives"].items())
    print(f"{name:<12} {v['median_s']:>9.4f} {v['ratio_to_xla_default']:>7.3f} "
          f"{v['compile_s']:>10.1f}  {coll or '-'}")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--layers", type=int, default=12)
  parser.add_argument("--d-model", type=int, default=768)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--layout", choices=("fsdp", "tp"), default="fsdp")
  parser.add_argument("--mesh", default="2,4", help="mesh shape, e.g. 8 or 2,4")
  parser.add_argument("--axis-type", choices=("explicit", "auto"), default="explicit")
  parser.add_argument("--quick", action="store_true", help="1 layer, d=64, 2 repeats")
  parser.add_argument("--json", help="also write the results to this JSON file")
  args = parser.parse_args(argv)
  # Shapes without a calibrated entry use the table's default (Muon's triple).
  warnings.filterwarnings("ignore", message="root_optax: no ")
  if args.quick:
    args.layers, args.d_model, args.repeats = 1, 64, 2
  mesh_shape = tuple(int(n) for n in args.mesh.split(","))
  result = run(args.layers, args.d_model, args.repeats, args.layout, mesh_shape, args.axis_type)
  _print_table(result)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=2)
  return result


if __name__ == "__main__":
  main()
