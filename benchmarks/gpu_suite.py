"""One-command GPU benchmark: ROOT vs optax Muon, its threshold, Newton-Schulz and memory in one table.

Rows (one Markdown table, printed and written to ``--out``):

- step time, compile time and peak device memory of one jitted ``update`` +
  ``apply_updates`` of `root_optax.root` vs `optax.contrib.muon` on the GPT
  trees of `_trees` (both: 5 Newton-Schulz steps with Muon's triple, Nesterov
  momentum 0.95, embeddings and non-matrix leaves on AdamW; see
  `step_time`). ``float32``: params and grads in float32. ``bfloat16``:
  params and grads in bfloat16 for both optimizers, so their momenta and
  Newton-Schulz iterations run in bfloat16 too (ROOT's threshold still
  counts in float32). Matmuls use JAX's default precision.
  Each (tree, dtype, optimizer) runs in its own process: compile times are
  fresh-process ones and the peak (``memory_stats()['peak_bytes_in_use']``
  after the timed steps; 'n/a' where the backend has no memory stats) is that
  optimizer's alone. The step is not donated: the peak holds params, grads
  and two copies of params + state, plus the step's scratch;
- the threshold's share: `root_optax.soft_threshold_outliers` (default
  ``method='fast'``) alone, jitted on the same gradients, over root()'s step;
- the fast threshold vs ``method='exact'`` (a sort), with the iterations of
  the fast search's `lax.while_loop` (its counting passes and the final read;
  each costs a device-to-host predicate copy on GPU), counted by a host
  callback in a separate jitted run of the same update;
- batched Newton-Schulz achieved TFLOP/s vs a plain batched matmul of the
  same operands, the practical limit (`ns_throughput.bench`).

Timings: a warm-up call, then the median of ``--repeats`` calls, each waited
for with ``block_until_ready``; compile time is that of
``jax.jit(step).lower(...).compile()``. A failing row (e.g. out of memory)
reads ``error: ...`` in its cells and the suite goes on.

  python benchmarks/gpu_suite.py            # gpt-12x768, gpt-24x1024: meant for < 5 min on one H100/H200
  python benchmarks/gpu_suite.py --quick    # one tiny tree, tiny stacks: ~40 s on a 2-core CPU
"""

from __future__ import annotations

import os

# Before jax starts: the per-optimizer processes share the device with this one.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import contextlib
import datetime
import functools
import io
import json
import subprocess
import sys
import time
from importlib import metadata
from unittest import mock

import jax
import jax.numpy as jnp
from optax.contrib import MuonDimensionNumbers

import _harness
import _trees
import ns_throughput
import step_time
import root_optax

TREES = {name: _trees.TREES[name] for name in ("gpt-12x768", "gpt-24x1024")}
QUICK_TREES = {
    # One tree: each (tree, dtype, optimizer) process costs 5-10 s of start-up and compiles on 2 cores.
    "gpt-2x64": _trees.TreeSpec("gpt-2x64", 2, 64, vocab=1024, context=128),
}
# (batch, rows, cols): the wide MLP stacks ROOT forms on each tree (c_fc and c_proj of every layer).
STACKS = ((24, 768, 3072), (48, 1024, 4096))
QUICK_STACKS = ((2, 64, 256), (2, 128, 512))
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
OPTIMIZERS = ("root", "muon")
MUON = "optax.contrib.muon"
COLUMNS = ["measurement", "case", "dtype", "value", "baseline", "ratio", "baseline / notes"]
ORDER = ("step time (ms)", "compile time (s)", "peak memory (MiB)", "threshold share of step",
         "threshold fast vs exact (ms)", "Newton-Schulz standard (TFLOP/s)", "Newton-Schulz gram (TFLOP/s)")


def error(e: BaseException | str) -> str:
  """A one-line table cell for a failure."""
  if not isinstance(e, str):
    e = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
  return "error: " + e.replace("|", "/")[:120]


def guarded(keys, fn, *args) -> dict:
  """``fn(*args)``, or ``keys`` all set to the error: one failing section leaves the others alone."""
  try:
    return fn(*args)
  except Exception as e:  # pylint: disable=broad-except
    return dict.fromkeys(keys, error(e))


# ---- worker: one (tree, dtype, optimizer) in its own process ----


@functools.partial(jax.jit, static_argnums=(1, 2))
def student_t4(key, shape, dtype, scale):
  """Student-t entries, 4 dof: ``z / sqrt(mean of 4 squared normals)``.

  `jax.random.t` samples gammas, which compile for tens of seconds on CPU.
  Its scratch (at most 5 float32 copies of the largest leaf, ``wte``) stays
  below the step's peak.
  """
  z = jax.random.normal(key, (5,) + shape)
  return (scale * z[0] * jax.lax.rsqrt(jnp.mean(jnp.square(z[1:]), axis=0))).astype(dtype)


def random_tree(spec, seed: int, dtype, scale: float) -> dict:
  """Student-t (4 dof) arrays of the tree's shapes: `_trees.make` on CPU, else drawn on the device.

  numpy draws ~20 M entries/s: fine for small trees, 18 s for gpt-24x1024's
  353 M; the device draw compiles once per distinct shape (~0.7 s each on CPU).
  """
  if jax.default_backend() == "cpu":
    return _trees.make(spec, seed=seed, dtype=dtype, scale=scale)
  leaves, treedef = jax.tree.flatten(jax.eval_shape(lambda: _trees.make_abstract(spec)))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [student_t4(k, x.shape, dtype, scale) for k, x in zip(keys, leaves)])


def median_seconds(run, repeats: int) -> float:
  _harness.block(run())  # warm-up: the first execution allocates
  return _harness.median([_harness.timed(run) for _ in range(repeats)])


def peak_mib():
  stats = jax.devices()[0].memory_stats()
  return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else "n/a"


def step_section(optimizer: str, params, grads, repeats: int) -> dict:
  tx = _trees.root_optimizer(ns_coeffs="muon") if optimizer == "root" else _trees.muon_optimizer()
  compile_s, compiled, state = step_time._compile(tx, params, grads)  # pylint: disable=protected-access
  step_s = median_seconds(step_time._runner(compiled, params, state, grads), repeats)  # pylint: disable=protected-access
  return {"compile_s": compile_s, "step_s": step_s, "peak_mib": peak_mib()}


def matrix_dims(tree):
  """ROOT's matrices (the block kernels) as `MuonDimensionNumbers`, None elsewhere."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: MuonDimensionNumbers() if _trees.is_matrix_path(p, x) else None, tree)


def loop_iterations(tx, grads) -> int:
  """Body runs of the `lax.while_loop`s in ``tx.update``, counted by a host callback in a separate jitted run."""
  calls = [0]
  while_loop = jax.lax.while_loop

  def count():
    calls[0] += 1

  def counting(cond, body, init):
    def counted(carry):
      jax.debug.callback(count)
      return body(carry)
    return while_loop(cond, counted, init)

  with mock.patch.object(jax.lax, "while_loop", counting):
    _harness.block(jax.jit(lambda g: tx.update(g, tx.init(g))[0])(grads))
  jax.effects_barrier()
  return calls[0]


def threshold_section(grads, repeats: int) -> dict:
  out = {}
  for method in ("fast", "exact"):
    tx = root_optax.soft_threshold_outliers(method=method, weight_dimension_numbers=matrix_dims)
    state = tx.init(grads)
    compiled = jax.jit(lambda g, tx=tx: tx.update(g, state)[0]).lower(grads).compile()
    out[f"{method}_s"] = median_seconds(lambda: compiled(grads), repeats)
  out["iterations"] = loop_iterations(root_optax.soft_threshold_outliers(weight_dimension_numbers=matrix_dims), grads)
  return out


def worker(tree: str, dtype: str, optimizer: str, repeats: int) -> dict:
  spec = {**TREES, **QUICK_TREES}[tree]
  params = random_tree(spec, 0, DTYPES[dtype], 0.02)
  grads = random_tree(spec, 1, DTYPES[dtype], 1.0)
  out = guarded(("compile_s", "step_s", "peak_mib"), step_section, optimizer, params, grads, repeats)
  if optimizer == "root":
    out.update(guarded(("fast_s", "exact_s", "iterations"), threshold_section, grads, repeats))
  return out


def run_worker(tree: str, dtype: str, optimizer: str, args) -> dict:
  """`worker` in a new Python process: its results, or ``{'error': ...}``."""
  command = [sys.executable, __file__, "--worker", f"{tree},{dtype},{optimizer}", "--repeats", str(args.repeats)]
  try:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=args.row_timeout)
  except subprocess.TimeoutExpired:
    return {"error": error(f"timeout after {args.row_timeout} s")}
  if proc.returncode != 0:
    last = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit status {proc.returncode}"]
    return {"error": error(last[-1])}
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- rows ----


def row(measurement, case, dtype, value, baseline, notes) -> dict:
  numbers = all(isinstance(v, (int, float)) for v in (value, baseline))
  ratio = value / baseline if numbers and baseline else "n/a"
  return dict(zip(COLUMNS, (measurement, case, dtype, value, baseline, ratio, notes)))


def optimizer_rows(tree: str, dtype: str, results: dict) -> list[dict]:
  """Step, compile, memory and threshold rows of one tree and dtype."""
  cell = lambda opt, key: results[opt].get(key, results[opt].get("error", error("missing")))
  ms = lambda opt, key: 1e3 * cell(opt, key) if isinstance(cell(opt, key), float) else cell(opt, key)
  iterations = cell("root", "iterations")
  return [
      row("step time (ms)", tree, dtype, ms("root", "step_s"), ms("muon", "step_s"), MUON),
      row("compile time (s)", tree, dtype, cell("root", "compile_s"), cell("muon", "compile_s"), MUON),
      row("peak memory (MiB)", tree, dtype, cell("root", "peak_mib"), cell("muon", "peak_mib"), MUON),
      row("threshold share of step", tree, dtype, ms("root", "fast_s"), ms("root", "step_s"),
          "ms: soft_threshold_outliers alone / whole root() step"),
      row("threshold fast vs exact (ms)", tree, dtype, ms("root", "fast_s"), ms("root", "exact_s"),
          f"method='exact' (sort); fast: {iterations} while_loop iterations"),
  ]


def ns_rows(shape, dtype: str, args) -> list[dict]:
  """Newton-Schulz vs matmul rows of one stack, standard and Gram forms."""
  case = "x".join(map(str, shape))
  notes = "jnp.matmul (n x m) @ (m x n), same operands"
  try:
    results = ns_throughput.bench(shape, dtype, args)
  except Exception as e:  # pylint: disable=broad-except
    methods = ("standard", "gram")
    return [row(f"Newton-Schulz {m} (TFLOP/s)", case, dtype, error(e), error(e), notes) for m in methods]
  return [row(f"Newton-Schulz {r['method']} (TFLOP/s)", case, dtype, r["ns_gflops"] / 1e3,
              r["matmul_gflops"] / 1e3, notes) for r in results]


def header(args, seconds: float) -> str:
  device = jax.devices()[0]
  versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("jax", "jaxlib", "optax"))
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return (f"GPU suite: {device.device_kind} ({jax.default_backend()}), {versions}, "
          f"root_optax {root_optax.__version__}, {date}; median of {args.repeats} after a warm-up; "
          f"{seconds:.0f} s in all{' (--quick)' if args.quick else ''}\n\n"
          "bfloat16 rows: params and grads in bfloat16 for both optimizers (so momenta and Newton-Schulz "
          "too; ROOT's threshold counts in float32); matmuls at JAX's default precision.")


def markdown(rows: list[dict]) -> str:
  """`_harness.print_table`'s table, as text."""
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    _harness.print_table(sorted(rows, key=lambda r: ORDER.index(r["measurement"])), COLUMNS)
  return text.getvalue()


def suite(args) -> list[dict]:
  rows = []
  for tree in QUICK_TREES if args.quick else TREES:
    for dtype in DTYPES:
      results = {}
      for optimizer in OPTIMIZERS:
        start = time.perf_counter()
        results[optimizer] = run_worker(tree, dtype, optimizer, args)
        print(f"{tree} {dtype} {optimizer}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
      rows += optimizer_rows(tree, dtype, results)
  for shape in QUICK_STACKS if args.quick else STACKS:  # after the workers: they had the device alone
    for dtype in DTYPES:
      rows += ns_rows(shape, dtype, args)
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny trees and stacks (CPU, < 1 min)")
  p.add_argument("--out", default="gpu_suite.md", help="also write the table here")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 10, --quick 2)")
  p.add_argument("--row-timeout", type=int, default=240, help="seconds per optimizer process")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  args.repeats = args.repeats or (2 if args.quick else 10)
  if args.worker:
    print(json.dumps(worker(*args.worker.split(","), args.repeats)))
    return
  start = time.perf_counter()
  table = markdown(suite(args))
  text = f"{header(args, time.perf_counter() - start)}\n\n{table}"
  print(text, end="")
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
