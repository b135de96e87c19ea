"""Runs the multi-device cases of `test_sharding.py` on 8 CPU host devices.

XLA_FLAGS must be set before jax is imported, so `test_sharding.py` runs this
file once in a subprocess; it prints one JSON object: case name ->
``{"ok": bool, "detail": str}``.
"""

from __future__ import annotations

import os

# Backend optimisation level 0 halves CPU compile time; every result here is
# compared with a reference compiled in this same process.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402
from optax.contrib import MuonDimensionNumbers  # noqa: E402

import root_optax  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import hlo_stats  # noqa: E402  (benchmarks/hlo_stats.py)

warnings.filterwarnings("ignore", message="root_optax: no ")
# float32 updates of size ~0.2: the default 'auto' coefficients (Schatten-4, first
# step a = 8.3) amplify the rounding of differently ordered sharded reductions to
# ~1.4e-5; a real sharding bug moves updates by O(0.1).
ATOL = 3e-5
LAYERS, D, VOCAB = 3, 32, 64
STACKED = MuonDimensionNumbers(reduction_axis=1, output_axis=2)
MATRIX = MuonDimensionNumbers(reduction_axis=0, output_axis=1)
# (kind, shape): 'col' / 'row' are column- / row-parallel under tensor parallelism.
# Two Newton-Schulz shape groups, (D, D) and (D, 4D), each mixing stacked and
# 2-D or transposed leaves; embeddings and the head go to AdamW as in the paper.
MODEL = {
    "embed": ("col", (VOCAB, D)),
    "blocks": {
        "attn": ("col", (LAYERS, D, D)),
        "proj": ("row", (LAYERS, D, D)),
        "mlp_in": ("col", (LAYERS, D, 4 * D)),
        "mlp_out": ("row", (LAYERS, 4 * D, D)),
        "norm": ("vec", (LAYERS, D)),
    },
    "extra": ("row", (D, D)),
    "head": ("col", (D, VOCAB)),
    "bias": ("vec", (VOCAB,)),
}
LAYOUTS = ("fsdp", "tp")
# One copy of the model per layout, so that one compiled step checks both and
# shape groups mix matrices of different shardings.
TREE = {layout: MODEL for layout in LAYOUTS}
_is_spec = lambda x: isinstance(x, tuple) and isinstance(x[0], str)


def dimension_numbers():
  def dims(path, spec):
    kind, shape = spec
    name = jax.tree_util.keystr(path)
    if kind == "vec" or "embed" in name or "head" in name:
      return None
    return STACKED if len(shape) == 3 else MATRIX
  return jax.tree_util.tree_map_with_path(dims, TREE, is_leaf=_is_spec)


def make_params(seed=0):
  leaves, treedef = jax.tree.flatten(TREE, is_leaf=_is_spec)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
      treedef, [jax.random.normal(k, shape) for k, (_, shape) in zip(keys, leaves)])


def tree_specs(axes):
  return {layout: layout_specs(layout, axes) for layout in LAYOUTS}


def layout_specs(layout, axes):
  """FSDP: rows over all axes. TP: columns / rows over the last axis, the other dim over the rest."""
  def spec(kind_shape):
    kind, shape = kind_shape
    lead = (None,) * (len(shape) - 2)
    if kind == "vec":
      return P()
    if layout == "fsdp":
      return P(*lead, axes, None)
    tp, rest = axes[-1], (axes[:-1] or None)
    return P(*lead, rest, tp) if kind == "col" else P(*lead, tp, rest)
  return jax.tree.map(spec, MODEL, is_leaf=_is_spec)


def make_tx(sharding):
  return root_optax.root(
      1.0, muon_weight_dimension_numbers=dimension_numbers(), sharding=sharding)


class CompileCounter:
  """Counts XLA backend compilations (of any function) while enabled."""

  def __init__(self):
    self.count, self.enabled = 0, False
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event, duration, **kwargs):
    del duration, kwargs
    if self.enabled and event == BACKEND_COMPILE_EVENT:
      self.count += 1


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
COMPILES = CompileCounter()


def grads_for(step, params):
  return jax.tree.map(lambda p: jnp.sin(p * (step + 1.0)) + 0.01 * p ** 3, params)


def replicate_scalars(state, mesh):
  """Commits scalar and per-matrix state to the mesh, as jit returns them.

  Left uncommitted on one device, they make the second step recompile with
  any optax optimizer.
  """
  replicated = NamedSharding(mesh, P())
  # Scalars, and ROOT's per-matrix figures (small vectors made by init on one device).
  uncommitted = lambda x: x.ndim == 0 or isinstance(x.sharding, jax.sharding.SingleDeviceSharding)
  return jax.tree.map(lambda x: jax.device_put(x, replicated) if uncommitted(x) else x, state)


def run_steps(tx, params, steps=3, mesh=None):
  """Jitted optimizer steps on synthetic gradients.

  Returns:
    ``(updates, params, state, traces, compiles, step)`` where ``traces``
    counts traces of the step and ``compiles`` the compilations after the
    first step.
  """
  state = tx.init(params)
  if mesh is not None:
    state = replicate_scalars(state, mesh)
  traces = []

  @jax.jit
  def step(params, state, i):
    traces.append(i)
    updates, state = tx.update(grads_for(i, params), state, params)
    return updates, optax.apply_updates(params, updates), state

  COMPILES.count = 0
  for i in range(steps):
    COMPILES.enabled = i > 0
    updates, params, state = step(params, state, jnp.float32(i))
  COMPILES.enabled = False
  return updates, params, state, len(traces), COMPILES.count, step


def max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def same_shardings(a, b):
  """Leaf by leaf; scalars (step counts) are left out: jit may commit them to the mesh."""
  return not sharding_mismatches(a, b)


def sharding_mismatches(a, b):
  flat_a, _ = jax.tree_util.tree_flatten_with_path(a)
  return [f"{jax.tree_util.keystr(k)}: {x.sharding} vs {y.sharding}"
          for (k, x), y in zip(flat_a, jax.tree.leaves(b))
          if x.ndim and not x.sharding.is_equivalent_to(y.sharding, x.ndim)]


def make_mesh(shape, axis_type=AxisType.Explicit):
  names = ("data", "model")[-len(shape):] if len(shape) == 1 else ("data", "model")
  return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(shape))


def case_updates(reference, mesh_shape, sharding, axis_type=AxisType.Explicit, collectives=None):
  mesh = make_mesh(mesh_shape, axis_type)
  specs = tree_specs(mesh.axis_names)
  params = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), make_params(), specs)
  tx = make_tx(mesh if sharding == "mesh" else sharding)
  init_state = replicate_scalars(tx.init(params), mesh)
  updates, new_params, state, traces, compiles, step = run_steps(tx, params, mesh=mesh)
  if collectives is not None:  # from the executable cache: no new compilation
    hlo = step.lower(new_params, state, jnp.float32(0)).compile().as_text()
    collectives.update(hlo_stats.collective_stats(hlo))
  ref_updates, ref_params = reference
  diffs = {layout: max(max_diff(updates[layout], ref_updates[layout]),
                       max_diff(new_params[layout], ref_params[layout])) for layout in LAYOUTS}
  diff = max(diffs.values())
  checks = {
      "close": diff <= ATOL,
      "param_shardings": same_shardings(params, new_params),
      "update_shardings": same_shardings(params, updates),
      "state_shardings": same_shardings(init_state, state),
      "traced_once": traces == 1,
      "no_recompile": compiles == 0,
  }
  detail = "max |diff| " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()) + f"; {checks}"
  if not checks["state_shardings"]:
    detail += f"; state: {sharding_mismatches(init_state, state)}"
  if compiles:
    detail += f"; {compiles} compilations after the first step"
  return all(checks.values()), detail


def compile_fn(fn, *args):
  return jax.jit(fn).lower(*args).compile()


def case_fast_quantile_collectives():
  """The fast quantile of FSDP/TP-sharded matrices all-reduces counts only."""
  mesh = make_mesh((2, 4))
  sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), make_params(),
                         tree_specs(mesh.axis_names))
  out = []
  for layout in LAYOUTS:
    tree = sharded[layout]
    mats = [tree["blocks"]["attn"], tree["blocks"]["mlp_out"], tree["extra"]]
    fn = lambda ms: jax.sharding.auto_axes(
        lambda ms: root_optax.fast_abs_quantiles(ms, 0.9), out_sharding=[P()] * 3)(ms)
    compiled = compile_fn(fn, mats)
    stats = hlo_stats.collective_stats(compiled.as_text())
    got = compiled(mats)
    want = [np.quantile(np.abs(np.asarray(m)).reshape(m.shape[:-2] + (-1,)), 0.9, axis=-1)
            for m in mats]
    moved = {op: stats.get(op, (0, 0)) for op in ("all-gather", "all-to-all", "collective-permute")}
    # Per matrix and pass: 4 probe counts, or the 3 values of the last pass; float32.
    matrices = sum(int(np.prod(m.shape[:-2])) for m in mats)
    biggest = max([b // max(c, 1) for c, b in stats.values()] or [0])
    ok = (not any(c for c, _ in moved.values()) and "all-reduce" in stats
          and biggest <= 4 * 7 * matrices
          and all(np.allclose(g, w, rtol=2e-6, atol=0) for g, w in zip(got, want)))
    out.append((ok, f"{layout}: {stats}, max |q - numpy| {max_diff(got, want):.1e}"))
  return all(o for o, _ in out), "; ".join(d for _, d in out)


def case_redistribution_bytes(sharded, default):
  """The sharded root() step moves fewer collective bytes than XLA's default and
  gathers no matrix: its all-gathers (the gate's row and column histories,
  kept replicated) move under 1% of the default's bytes."""
  totals = {name: sum(b for _, b in stats.values())
            for name, stats in (("sharded", sharded), ("default", default))}
  gathered = sharded.get("all-gather", (0, 0))[1]
  ok = bool(sharded) and totals["sharded"] < totals["default"] and gathered < 0.01 * totals["default"]
  return ok, f"bytes per device {totals}; sharded {sharded}; default {default}"


def case_padding_and_zeros():
  """A group smaller than the mesh (padded), zero and 1xN matrices stay finite and exact."""
  mesh = make_mesh((8,))
  tree = {"a": jnp.zeros((16, 8)), "b": jax.random.normal(jax.random.key(1), (8, 16)),
          "c": jax.random.normal(jax.random.key(2), (1, 24))}
  specs = {"a": P("model", None), "b": P(None, "model"), "c": P()}
  sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)
  tx_ref = root_optax.ada_newton_orthogonalize("muon")
  tx = root_optax.ada_newton_orthogonalize("muon", sharding="auto")
  want = jax.jit(lambda u: tx_ref.update(u, tx_ref.init(u))[0])(tree)
  got = jax.jit(lambda u: tx.update(u, tx.init(u))[0])(sharded)
  finite = all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(got))
  diff = max_diff(got, want)
  return finite and diff <= ATOL and same_shardings(sharded, got), f"max |diff| {diff:.1e}"


def case_exact_threshold():
  """threshold_method='exact' (a sort) works under Explicit axes on both paths."""
  mesh = make_mesh((2, 4))
  tree = {"w": jax.random.normal(jax.random.key(1), (D, 4 * D)),
          "s": jax.random.normal(jax.random.key(2), (LAYERS, D, D))}
  specs = {"w": P("data", "model"), "s": P(None, ("data", "model"), None)}
  dims = {"w": MATRIX, "s": STACKED}
  sharded = jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree, specs)
  make = lambda sharding: root_optax.root(
      1.0, threshold_method="exact", muon_weight_dimension_numbers=dims, sharding=sharding)
  one_step = lambda tx: jax.jit(lambda g: tx.update(g, tx.init(g), g)[0])
  want = one_step(make(None))(tree)
  diffs = {}
  for sharding in (None, "auto"):
    got = one_step(make(sharding))(sharded)
    if not same_shardings(sharded, got):
      return False, f"sharding={sharding}: {sharding_mismatches(sharded, got)}"
    diffs[sharding] = max_diff(got, want)
  return max(diffs.values()) <= ATOL, f"max |diff| {diffs}"


def main():
  results = {}

  def record(name, fn, *args):
    start = time.perf_counter()
    try:
      ok, detail = fn(*args)
    except Exception:  # noqa: BLE001 - reported to pytest as the failure detail
      ok, detail = False, traceback.format_exc(limit=4)
    results[name] = {"ok": bool(ok), "detail": detail,
                     "seconds": round(time.perf_counter() - start, 2)}

  single = jax.devices()[0]
  params = jax.device_put(make_params(), single)
  updates, new_params, *_ = run_steps(make_tx(None), params)
  reference = (updates, new_params)
  sharded, default = {}, {}
  for mesh_shape, sharding in (((8,), "auto"), ((2, 4), "auto"), ((4, 2), "mesh")):
    # 'mesh' passes the Mesh itself, 'auto' lets the transform find it.
    tag = "x".join(map(str, mesh_shape))
    record(f"sharded-{tag}", case_updates, reference, mesh_shape, sharding, AxisType.Explicit,
           sharded if tag == "2x4" else None)
  record("default-2x4", case_updates, reference, (2, 4), None, AxisType.Explicit, default)
  record("auto-axes-sharded-4x2", case_updates, reference, (4, 2), "mesh", AxisType.Auto)
  record("fast-quantile-collectives", case_fast_quantile_collectives)
  record("redistribution-bytes", case_redistribution_bytes, sharded, default)
  record("padding-and-zeros", case_padding_and_zeros)
  record("exact-threshold-explicit", case_exact_threshold)
  json.dump(results, sys.stdout)


if __name__ == "__main__":
  main()
