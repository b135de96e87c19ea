"""Step time and first-step compile time: `root_optax.root` vs `optax.contrib.muon`.

One jitted ``update`` + ``apply_updates`` on GPT-shaped trees (see `_trees`).
Both optimizers run 5 Newton-Schulz steps of the same cost (ROOT with
``coefficients='muon'``: Muon's triple at every step, like optax's default),
Nesterov momentum 0.95, weight decay 0.1, RMS scaling 0.2, and send the
embeddings and non-matrix leaves to AdamW. ROOT adds its outlier threshold
(``threshold_method``, default ``'fast'``, and its ``threshold_rank_tolerance``,
default 0). ``root_std`` is ROOT with ``ns_method='standard'``: the standard
Newton-Schulz iteration that Muon runs instead of the Gram form that
``'auto'`` picks for rectangular float32 matrices, so ``std_step_ratio``
against ``step_ratio`` is what the Gram form buys. Timings alternate between
the three optimizers and the bare
batched `newton_schulz` of the same matrix stacks (``bare_ns_s``: the floor
of the step, ``root_over_bare``: ROOT's overhead over it) in one process;
each ratio is the median of the per-pair ratios.

  python benchmarks/step_time.py            # gpt-12x768, gpt-48x256 (~6 min on a quiet 2-core CPU)
  python benchmarks/step_time.py --quick    # small trees, ~1-2 min
  python benchmarks/step_time.py --trees all --json step.json
  python benchmarks/step_time.py --trees gpt-24x1024 --sequential   # fits in 24 GiB
  python benchmarks/step_time.py --trees gpt-48x256 --fresh-compiles 3   # compile time in new processes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

import root_optax
from root_optax._src import polynomials

import _harness
import _trees


def _step_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _compile(tx, params, grads):
  """(seconds to trace, lower and compile the first step, compiled step, state)."""
  state = tx.init(params)
  start = time.perf_counter()
  compiled = jax.jit(_step_fn(tx)).lower(params, state, grads).compile()
  return time.perf_counter() - start, compiled, state


def _runner(compiled, params, state, grads):
  carry = [params, state]

  def run():
    carry[0], carry[1] = compiled(carry[0], carry[1], grads)
    return carry[0]
  return run


def _fresh_compile_seconds(tree: str, key: str, args) -> float:
  """Compile seconds of ``key``'s first step in a new Python process.

  Repeated compilations in one process drift (optax Muon's grew from 15 s to
  22 s over three in one run), so each repeat starts clean.
  """
  command = [sys.executable, __file__, "--compile-only", key, "--trees", tree,
             "--coefficients", args.coefficients, "--threshold-method", args.threshold_method,
             "--threshold-rank-tolerance", str(args.threshold_rank_tolerance)]
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])["compile_s"]


def _bare_newton_schulz(spec, args):
  """The same stacks through the bare batched `newton_schulz`, with nothing else.

  One ``(count, min, max)`` float32 stack per shape of the matrices ROOT
  trains, the coefficients of ``--coefficients`` at 5 steps (or Muon's
  triple where that table has no entry), one jitted call: the floor of a
  ROOT step that orthogonalises these matrices.
  """
  table = root_optax.load_coefficients(args.coefficients)
  counts: dict = {}
  for (rows, cols), count in _trees.matrix_shapes(spec).items():
    key = (min(rows, cols), max(rows, cols))
    counts[key] = counts.get(key, 0) + count
  keys = jax.random.split(jax.random.PRNGKey(2), len(counts))
  stacks = {f"{m}x{n}": jax.random.normal(k, (c, m, n), jnp.float32)
            for k, ((m, n), c) in zip(keys, counts.items())}
  coeffs = {f"{m}x{n}": polynomials.steps_schedule(table.lookup((m, n))[0], 5) for m, n in counts}
  fn = jax.jit(lambda xs: {k: root_optax.newton_schulz(x, coeffs[k]) for k, x in xs.items()})
  compiled = fn.lower(stacks).compile()
  return lambda: compiled(stacks)


def _optimizers(args) -> dict:
  return {
      "root": lambda: _trees.root_optimizer(
          ns_coeffs=args.coefficients, threshold_method=args.threshold_method,
          threshold_rank_tolerance=args.threshold_rank_tolerance),
      "root_std": lambda: _trees.root_optimizer(
          ns_coeffs=args.coefficients, threshold_method=args.threshold_method,
          threshold_rank_tolerance=args.threshold_rank_tolerance, ns_method="standard"),
      "muon": _trees.muon_optimizer,
  }


def _interleaved_times(optimizers, params, grads, args, compile_s, bare) -> dict:
  """Compiles every optimizer, then times their steps and the bare kernel alternately."""
  compiled = {}
  for _ in range(args.compile_repeats):
    for key, make_tx in optimizers.items():
      seconds, compiled[key], _ = _compile(make_tx(), params, grads)
      compile_s[key].append(seconds)
  runs = {key: _runner(compiled[key], params, optimizers[key]().init(params), grads) for key in optimizers}
  runs["bare"] = bare
  for run in runs.values():  # warm-up: first execution allocates
    _harness.block(run())
  return _harness.interleaved(runs, args.repeats)


def bench_tree(name: str, args) -> dict:
  spec = _trees.TREES[name]
  params = _trees.make(spec, seed=0)
  grads = _trees.make(spec, seed=1, scale=1.0)
  optimizers = _optimizers(args)
  compile_s = {k: [] for k in optimizers}
  bare = _bare_newton_schulz(spec, args)
  if args.sequential:
    times = {}
    for key, make_tx in optimizers.items():
      for _ in range(args.compile_repeats):
        seconds, compiled, state = _compile(make_tx(), params, grads)
        compile_s[key].append(seconds)
      run = _runner(compiled, params, state, grads)
      _harness.block(run())  # warm-up: first execution allocates
      times[key] = [_harness.timed(run) for _ in range(args.repeats)]
      del compiled, state, run  # frees this optimizer's buffers before the next one
    _harness.block(bare())
    times["bare"] = [_harness.timed(bare) for _ in range(args.repeats)]
  else:
    times = _interleaved_times(optimizers, params, grads, args, compile_s, bare)
  if args.fresh_compiles:
    compile_s = {k: [] for k in optimizers}
    for i in range(args.fresh_compiles):  # alternating order: neither always goes first
      for key in (list(optimizers) if i % 2 == 0 else list(optimizers)[::-1]):
        compile_s[key].append(_fresh_compile_seconds(name, key, args))
  return {
      "tree": name,
      "matrices": sum(_trees.matrix_shapes(spec).values()),
      "leaves": len(jax.tree.leaves(params)),
      "root_step_s": _harness.median(times["root"]),
      "muon_step_s": _harness.median(times["muon"]),
      "step_ratio": (_harness.median(times["root"]) / _harness.median(times["muon"]) if args.sequential
                     else _harness.paired_ratio(times["root"], times["muon"])),
      "root_std_step_s": _harness.median(times["root_std"]),
      "std_step_ratio": (_harness.median(times["root_std"]) / _harness.median(times["muon"])
                         if args.sequential else _harness.paired_ratio(times["root_std"], times["muon"])),
      "bare_ns_s": _harness.median(times["bare"]),
      "root_over_bare": (_harness.median(times["root"]) / _harness.median(times["bare"]) if args.sequential
                         else _harness.paired_ratio(times["root"], times["bare"])),
      "root_compile_s": _harness.median(compile_s["root"]),
      "muon_compile_s": _harness.median(compile_s["muon"]),
      "compile_ratio": _harness.paired_ratio(compile_s["root"], compile_s["muon"]),
      "times": times,
      "compile_times": compile_s,
  }


def main():
  p = _harness.parser(__doc__.splitlines()[0], repeats=3)
  p.add_argument("--trees", default="", help="comma list of tree names, or 'all'")
  p.add_argument("--threshold-method", default="fast", choices=("fast", "exact"))
  p.add_argument("--threshold-rank-tolerance", type=float, default=0.0,
                 help="root(threshold_rank_tolerance=...); 0 is the default, exact order statistics")
  p.add_argument("--coefficients", default="muon")
  p.add_argument("--compile-repeats", type=int, default=1)
  p.add_argument("--fresh-compiles", type=int, default=0,
                 help="also measure each compile time this many times in new processes (alternating order); "
                      "these replace the in-process compile times")
  p.add_argument("--compile-only", choices=("root", "root_std", "muon"), help=argparse.SUPPRESS)
  p.add_argument("--sequential", action="store_true",
                 help="time one optimizer after the other, freeing each (gpt-24x1024 needs more than "
                      "24 GiB with both alive); the step ratio is then a ratio of medians")
  args = p.parse_args()
  if args.compile_only:
    spec = _trees.TREES[args.trees]
    params, grads = _trees.make(spec, seed=0), _trees.make(spec, seed=1, scale=1.0)
    seconds, _, _ = _compile(_optimizers(args)[args.compile_only](), params, grads)
    print(json.dumps({"compile_s": seconds}))
    return
  results = []
  for name in _trees.names(args.trees, args.quick):
    results.append(bench_tree(name, args))
    r = results[-1]
    print(f"{name}: root {r['root_step_s']:.3f}s muon {r['muon_step_s']:.3f}s "
          f"ratio {r['step_ratio']:.3f} (standard NS {r['std_step_ratio']:.3f}); bare NS {r['bare_ns_s']:.3f}s, root/bare {r['root_over_bare']:.3f}; "
          f"compile ratio {r['compile_ratio']:.3f}", flush=True)
  _harness.print_table(results, [
      "tree", "matrices", "leaves", "root_step_s", "muon_step_s", "step_ratio", "root_std_step_s",
      "std_step_ratio", "bare_ns_s",
      "root_over_bare", "root_compile_s", "muon_compile_s", "compile_ratio"],
      f"root(threshold_method={args.threshold_method!r}, "
      f"threshold_rank_tolerance={args.threshold_rank_tolerance}) vs optax.contrib.muon, "
      f"median of {args.repeats} interleaved steps; compile times "
      + (f"from {args.fresh_compiles} new processes each" if args.fresh_compiles else "in this process"))
  _harness.write_json(args.json, "step_time", args, results)


if __name__ == "__main__":
  main()
