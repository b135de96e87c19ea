"""Step time and first-step compile time: `root_optax.root` vs `optax.contrib.muon`.

One jitted ``update`` + ``apply_updates`` on GPT-shaped trees (see `_trees`).
Both optimizers run 5 Newton-Schulz steps of the same cost (ROOT with
``coefficients='muon'``: Muon's triple at every step, like optax's default),
Nesterov momentum 0.95, weight decay 0.1, RMS scaling 0.2, and send the
embeddings and non-matrix leaves to AdamW. ROOT adds its outlier threshold
(``threshold_method``, default ``'fast'``). Timings alternate between the two
optimizers in one process; the ratio is the median of the per-pair ratios.

  python benchmarks/step_time.py            # gpt-12x768, gpt-48x256 (~6 min on a quiet 2-core CPU)
  python benchmarks/step_time.py --quick    # small trees, ~1-2 min
  python benchmarks/step_time.py --trees all --json step.json
  python benchmarks/step_time.py --trees gpt-24x1024 --sequential   # fits in 24 GiB
"""

from __future__ import annotations

import time

import jax
import optax

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


def _interleaved_times(optimizers, params, grads, args, compile_s) -> dict:
  """Compiles every optimizer, then times their steps alternately."""
  compiled = {}
  for _ in range(args.compile_repeats):
    for key, make_tx in optimizers.items():
      seconds, compiled[key], _ = _compile(make_tx(), params, grads)
      compile_s[key].append(seconds)
  runs = {key: _runner(compiled[key], params, optimizers[key]().init(params), grads) for key in optimizers}
  for run in runs.values():  # warm-up: first execution allocates
    _harness.block(run())
  return _harness.interleaved(runs, args.repeats)


def bench_tree(name: str, args) -> dict:
  spec = _trees.TREES[name]
  params = _trees.make(spec, seed=0)
  grads = _trees.make(spec, seed=1, scale=1.0)
  optimizers = {
      "root": lambda: _trees.root_optimizer(
          coefficients=args.coefficients, threshold_method=args.threshold_method),
      "muon": _trees.muon_optimizer,
  }
  compile_s = {k: [] for k in optimizers}
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
  else:
    times = _interleaved_times(optimizers, params, grads, args, compile_s)
  return {
      "tree": name,
      "matrices": sum(_trees.matrix_shapes(spec).values()),
      "leaves": len(jax.tree.leaves(params)),
      "root_step_s": _harness.median(times["root"]),
      "muon_step_s": _harness.median(times["muon"]),
      "step_ratio": (_harness.median(times["root"]) / _harness.median(times["muon"]) if args.sequential
                     else _harness.paired_ratio(times["root"], times["muon"])),
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
  p.add_argument("--coefficients", default="muon")
  p.add_argument("--compile-repeats", type=int, default=1)
  p.add_argument("--sequential", action="store_true",
                 help="time one optimizer after the other, freeing each (gpt-24x1024 needs more than "
                      "24 GiB with both alive); the step ratio is then a ratio of medians")
  args = p.parse_args()
  results = []
  for name in _trees.names(args.trees, args.quick):
    results.append(bench_tree(name, args))
    r = results[-1]
    print(f"{name}: root {r['root_step_s']:.3f}s muon {r['muon_step_s']:.3f}s "
          f"ratio {r['step_ratio']:.3f}; compile ratio {r['compile_ratio']:.3f}", flush=True)
  _harness.print_table(results, [
      "tree", "matrices", "leaves", "root_step_s", "muon_step_s", "step_ratio",
      "root_compile_s", "muon_compile_s", "compile_ratio"],
      f"root(threshold_method={args.threshold_method!r}) vs optax.contrib.muon, "
      f"median of {args.repeats} interleaved steps")
  _harness.write_json(args.json, "step_time", args, results)


if __name__ == "__main__":
  main()
