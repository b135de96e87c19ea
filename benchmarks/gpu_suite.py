"""One-command GPU benchmark: ROOT vs optax Muon, its threshold, Newton-Schulz and memory in one table.

Rows (one Markdown table, printed and written to ``--out``):

- step time, compile time and peak device memory of one jitted ``update`` +
  ``apply_updates`` of `root_optax.root` (its defaults) vs `optax.contrib.muon` on the GPT
  trees of `_trees` (both: 5 Newton-Schulz steps with Muon's triple, Nesterov
  momentum 0.95, embeddings and non-matrix leaves on AdamW; see
  `step_time`). ``float32``: params and grads in float32. ``bfloat16``:
  params and grads in bfloat16 for both optimizers, so their momenta and
  Newton-Schulz iterations run in bfloat16 too (ROOT's threshold still
  counts in float32). Matmuls use JAX's default precision.
  Each measurement of one (tree, dtype, optimizer) runs in its own process:
  compile times are fresh-process ones and the peak
  (``memory_stats()['peak_bytes_in_use']`` after the timed steps; 'n/a' where
  the backend has no memory stats) is that optimizer's alone. ROOT and Muon
  run side by side: ``--pairs`` rounds of one ROOT and one Muon process,
  alternating which goes first, so that a drift of the machine's speed
  reaches both alike; value and baseline are the medians over the rounds and
  the ratio is the median of the per-round ratios. The step is not donated:
  the peak holds params, grads and two copies of params + state, plus the
  step's scratch;
- the threshold's share: `root_optax.soft_threshold_outliers` (default
  ``method='fast'``) alone, jitted on the same gradients (in a process of its
  own, with the next two), over root()'s step;
- the fast threshold vs ``method='exact'`` (a sort), with the iterations of
  the fast quantile search's `lax.while_loop` (its counting passes and the
  final read; each costs a device-to-host predicate copy on GPU);
- the quantile search's iterations in one step of ``root()``'s default and of
  ``variant='paper'`` (0 where a variant runs no search). Only the search's
  loop is counted (`search_iterations`), by a host callback in a separate
  jitted run of the same update;
- batched Newton-Schulz achieved TFLOP/s vs a plain batched matmul of the
  same operands, the practical limit (`ns_throughput.bench`).

Timings: a warm-up call, then the median of ``--repeats`` calls, each waited
for with ``block_until_ready``; compile time is that of
``jax.jit(step).lower(...).compile()``. A failing row (e.g. out of memory)
reads ``error: ...`` in its cells and the suite goes on. The order is a
first pair of every (tree, dtype), the threshold and search processes, the
Newton-Schulz stacks (in this process), then the further pairs; past
``--budget`` seconds what has not started is skipped (``error: skipped``;
a pair runs whole or not at all), so that a time limit still leaves a table.

  python benchmarks/gpu_suite.py                                  # gpt-12x768 and gpt-24x1024, 3 pairs
  python benchmarks/gpu_suite.py --trees gpt-12x768 --budget 140 --time-limit 190  # as gpu_run.sh
  python benchmarks/gpu_suite.py --quick    # one tiny tree, 2 pairs, tiny stacks: ~1.5 min on a 2-core CPU
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
import math
import statistics
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
EXTRAS = "extras"  # a ROOT process of its own: the threshold and the quantile search
MUON = "optax.contrib.muon"
COLUMNS = ["measurement", "case", "dtype", "value", "baseline", "ratio", "baseline / notes"]
ORDER = ("step time (ms)", "compile time (s)", "peak memory (MiB)", "threshold share of step",
         "threshold fast vs exact (ms)", "quantile search iterations", "Newton-Schulz standard (TFLOP/s)",
         "Newton-Schulz gram (TFLOP/s)")
# The quantile search: a `lax.while_loop` whose body is defined in one of root_optax's quantile
# modules (`root_optax._src.quantile_search` today). Other loops (e.g. `stacking`'s) are not counted.
SEARCH_PACKAGE = "root_optax."
SEARCH_MODULE_MARK = "quantile"


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


def _is_search_body(body) -> bool:
  """Whether a `lax.while_loop` body belongs to the quantile search (see `SEARCH_MODULE_MARK`)."""
  while isinstance(body, functools.partial):
    body = body.func
  module = getattr(body, "__module__", "") or ""
  return module.startswith(SEARCH_PACKAGE) and SEARCH_MODULE_MARK in module


def search_iterations(tx, grads) -> int:
  """Iterations of the quantile search's `lax.while_loop` in ``tx.update`` from its initial state.

  Counted by a host callback in the search's loop body, in a separate jitted
  run; every other `lax.while_loop` is left alone. 0 when ``tx`` runs no
  quantile search.
  """
  calls = [0]
  while_loop = jax.lax.while_loop

  def count():
    calls[0] += 1

  def counting(cond, body, init):
    if not _is_search_body(body):
      return while_loop(cond, body, init)

    def counted(carry):
      jax.debug.callback(count)
      return body(carry)
    return while_loop(cond, counted, init)

  with mock.patch.object(jax.lax, "while_loop", counting):
    _harness.block(jax.jit(lambda g: tx.update(g, tx.init(g), g)[0])(grads))
  jax.effects_barrier()
  return calls[0]


def threshold_section(grads, repeats: int) -> dict:
  out = {}
  for method in ("fast", "exact"):
    tx = root_optax.soft_threshold_outliers(method=method, weight_dimension_numbers=matrix_dims)
    state = tx.init(grads)
    compiled = jax.jit(lambda g, tx=tx: tx.update(g, state)[0]).lower(grads).compile()
    out[f"{method}_s"] = median_seconds(lambda: compiled(grads), repeats)
  out["iterations"] = search_iterations(
      root_optax.soft_threshold_outliers(weight_dimension_numbers=matrix_dims), grads)
  return out


def search_section(grads) -> dict:
  """The quantile search's iterations in one step of root()'s default and of variant='paper'."""
  variants = {"search_default": {}, "search_paper": {"variant": "paper"}}
  return {key: search_iterations(_trees.root_optimizer(ns_coeffs="muon", **kwargs), grads)
          for key, kwargs in variants.items()}


def worker(tree: str, dtype: str, what: str, repeats: int) -> dict:
  """One process's measurements: an optimizer's step (``what`` in `OPTIMIZERS`), or `EXTRAS`."""
  spec = {**TREES, **QUICK_TREES}[tree]
  grads = random_tree(spec, 1, DTYPES[dtype], 1.0)
  if what == EXTRAS:
    out = guarded(("fast_s", "exact_s", "iterations"), threshold_section, grads, repeats)
    out.update(guarded(("search_default", "search_paper"), search_section, grads))
    return out
  params = random_tree(spec, 0, DTYPES[dtype], 0.02)
  return guarded(("compile_s", "step_s", "peak_mib"), step_section, what, params, grads, repeats)


def run_worker(tree: str, dtype: str, what: str, args, budget: bool = True) -> dict:
  """`worker` in a new Python process: its results, or ``{'error': ...}``; skipped past
  ``--budget`` unless ``budget`` is False (the second process of a pair)."""
  if budget and time.perf_counter() > args.deadline:  # the budget stops starts, not a started process
    return {"error": error(f"skipped: past --budget {args.budget:g} s")}
  command = [sys.executable, __file__, "--worker", f"{tree},{dtype},{what}", "--repeats", str(args.repeats)]
  # --time-limit: a started process is stopped there, so that the table is still written in time.
  timeout = max(1, int(min(args.row_timeout, args.hard_deadline - time.perf_counter())))
  try:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": error(f"timeout after {timeout} s")}
  if proc.returncode != 0:
    last = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit status {proc.returncode}"]
    return {"error": error(last[-1])}
  return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- rows ----


def row(measurement, case, dtype, value, baseline, notes, ratio=None) -> dict:
  """A table row; ``ratio`` defaults to ``value / baseline`` where both are numbers."""
  numbers = all(isinstance(v, (int, float)) for v in (value, baseline))
  if ratio is None:
    ratio = value / baseline if numbers and baseline else "n/a"
  return dict(zip(COLUMNS, (measurement, case, dtype, value, baseline, ratio, notes)))


def _cell(result: dict, key: str):
  return result.get(key, result.get("error", error("missing")))


def _number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def paired(rounds: list[dict], key: str, scale: float = 1.0) -> tuple:
  """``(ROOT's median, Muon's median, median of the per-round ratios)`` of ``key`` over the rounds.

  A side with no number reads its first round's cell (an error, or 'n/a').
  """
  sides = {}
  for opt in OPTIMIZERS:
    cells = [_cell(r[opt], key) for r in rounds]
    numbers = [scale * c for c in cells if _number(c)]
    sides[opt] = statistics.median(numbers) if numbers else cells[0]
  ratios = [_cell(r["root"], key) / _cell(r["muon"], key) for r in rounds
            if _number(_cell(r["root"], key)) and _number(_cell(r["muon"], key)) and _cell(r["muon"], key)]
  return sides["root"], sides["muon"], statistics.median(ratios) if ratios else "n/a"


def optimizer_rows(tree: str, dtype: str, rounds: list[dict], extras: dict) -> list[dict]:
  """Step, compile, memory, threshold and search rows of one tree and dtype.

  ``rounds``: per round, ``{'root': ..., 'muon': ...}`` worker results;
  ``extras``: the `EXTRAS` process's (threshold and search).
  """
  cell = lambda key: _cell(extras, key)
  ms = lambda key: 1e3 * cell(key) if _number(cell(key)) else cell(key)
  measured = sum(all(_number(_cell(r[opt], "step_s")) for opt in OPTIMIZERS) for r in rounds)
  notes = (f"{MUON}; medians over {measured} of {len(rounds)} interleaved process pairs, "
           "ratio: median of the per-pair ratios")
  step, compile_s, peak = paired(rounds, "step_s", 1e3), paired(rounds, "compile_s"), paired(rounds, "peak_mib")
  return [
      row("step time (ms)", tree, dtype, step[0], step[1], notes, step[2]),
      row("compile time (s)", tree, dtype, compile_s[0], compile_s[1], notes, compile_s[2]),
      row("peak memory (MiB)", tree, dtype, peak[0], peak[1], notes, peak[2]),
      row("threshold share of step", tree, dtype, ms("fast_s"), step[0],
          "ms: soft_threshold_outliers alone / whole root() step (its median above)"),
      row("threshold fast vs exact (ms)", tree, dtype, ms("fast_s"), ms("exact_s"),
          f"method='exact' (sort); fast: {cell('iterations')} quantile search iterations"),
      row("quantile search iterations", tree, dtype, cell("search_default"), cell("search_paper"),
          "one step: root() default (value) vs variant='paper' (baseline); 0: no quantile search"),
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
          f"root_optax {root_optax.__version__}, {date}; median of {args.repeats} calls after a warm-up; "
          f"ROOT and Muon in {args.pairs} interleaved process pairs per tree and dtype; "
          f"{seconds:.0f} s in all{' (--quick)' if args.quick else ''}\n\n"
          "bfloat16 rows: params and grads in bfloat16 for both optimizers (so momenta and Newton-Schulz "
          "too; ROOT's threshold counts in float32); matmuls at JAX's default precision.")


def markdown(rows: list[dict]) -> str:
  """`_harness.print_table`'s table, as text."""
  text = io.StringIO()
  with contextlib.redirect_stdout(text):
    _harness.print_table(sorted(rows, key=lambda r: ORDER.index(r["measurement"])), COLUMNS)
  return text.getvalue()


def _pair(tree: str, dtype: str, k: int, args) -> dict:
  """Round ``k``: one ROOT and one Muon process, who goes first alternating; both or neither."""
  result = {}
  for optimizer in OPTIMIZERS if k % 2 == 0 else OPTIMIZERS[::-1]:
    start = time.perf_counter()
    result[optimizer] = run_worker(tree, dtype, optimizer, args, budget=not result)
    print(f"{tree} {dtype} {optimizer} (pair {k + 1}/{args.pairs}): "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if "skipped" in str(result[optimizer].get("error", "")):
      return {opt: result[optimizer] for opt in OPTIMIZERS}
  return result


def suite(args) -> list[dict]:
  """Under ``--budget``, in order of need: a first pair of every case, the extras, the
  Newton-Schulz stacks, then the further pairs."""
  cases = [(tree, dtype) for tree in args.trees for dtype in DTYPES]
  rounds = {case: [_pair(*case, 0, args)] for case in cases}
  extras = {}
  for case in cases:
    start = time.perf_counter()
    extras[case] = run_worker(*case, EXTRAS, args)
    print(f"{case[0]} {case[1]} threshold and search: {time.perf_counter() - start:.1f} s",
          file=sys.stderr, flush=True)
  ns = []
  for shape in QUICK_STACKS if args.quick else STACKS:  # in this process, no worker running
    for dtype in DTYPES:
      if time.perf_counter() > args.deadline:
        skipped = error(f"skipped: past --budget {args.budget:g} s")
        ns += [row(f"Newton-Schulz {m} (TFLOP/s)", "x".join(map(str, shape)), dtype, skipped, skipped, "")
               for m in ("standard", "gram")]
        continue
      ns += ns_rows(shape, dtype, args)
  for k in range(1, args.pairs):
    for case in cases:
      rounds[case].append(_pair(*case, k, args))
  return [r for case in cases for r in optimizer_rows(*case, rounds[case], extras[case])] + ns


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="tiny trees and stacks (CPU, ~1.5 min)")
  p.add_argument("--out", default="gpu_suite.md", help="also write the table here")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per cell (default 10, --quick 2)")
  p.add_argument("--pairs", type=int, default=None,
                 help="interleaved ROOT/Muon process pairs per tree and dtype (default 3, --quick 2)")
  p.add_argument("--trees", default=None, help=f"comma-separated, of {list(TREES)} (default: all)")
  p.add_argument("--row-timeout", type=int, default=240, help="seconds per optimizer process")
  p.add_argument("--budget", type=float, default=math.inf,
                 help="seconds; processes and stacks not started by then are skipped")
  p.add_argument("--time-limit", type=float, default=math.inf,
                 help="seconds; a process still running then is stopped (its cells read 'timeout')")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  args.repeats = args.repeats or (2 if args.quick else 10)
  if args.worker:
    print(json.dumps(worker(*args.worker.split(","), args.repeats)))
    return
  args.pairs = args.pairs or (2 if args.quick else 3)
  if args.pairs < 1:
    p.error(f"--pairs must be >= 1, got {args.pairs}")
  known = QUICK_TREES if args.quick else TREES
  args.trees = args.trees.split(",") if args.trees else list(known)
  if unknown := [t for t in args.trees if t not in known]:
    p.error(f"unknown trees {unknown}; choose from {list(known)}")
  start = time.perf_counter()
  args.deadline = start + args.budget
  args.hard_deadline = start + args.time_limit
  table = markdown(suite(args))
  text = f"{header(args, time.perf_counter() - start)}\n\n{table}"
  print(text, end="")
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
