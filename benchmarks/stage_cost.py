"""Where `root()`'s step and first compile go: the default with its stages switched off.

For each tree, in a new process per variant (so every compile is a first
compile): `root()`'s default; without the burst guard
(``burst_factor=math.inf``); without the outlier gate (``outlier_gate=math.inf``);
with neither (momentum, Newton-Schulz, scaling, AdamW leaves); and
`optax.contrib.muon`. Same set-up as `step_time` (Muon's triple at 5 steps,
embeddings and vectors on AdamW). Compile is trace + lower + compile of the
first step (wall and CPU seconds); the step is the median of ``--repeats``
calls of the compiled step.

  python benchmarks/stage_cost.py --trees gpt-16x128,gpt-8x320-qkvo,gpt-4x384
  python benchmarks/stage_cost.py --quick      # the quick trees (gpt-4x384, gpt-16x128, gpt-8x320-qkvo)
  python benchmarks/stage_cost.py --quick --trees gpt-2x64 --variants "default,optax Muon"
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import jax
import optax

import _harness
import _trees

VARIANTS = {
    "default": {},
    "burst guard off": {"burst_factor": math.inf},
    "gate off": {"outlier_gate": math.inf},
    "both off": {"outlier_gate": math.inf, "burst_factor": math.inf},
    "optax Muon": None,
}


def measure(tree: str, variant: str, repeats: int) -> dict:
  """Compile and step seconds of one variant on one tree, in this process."""
  spec = _trees.TREES[tree]
  params, grads = _trees.make(spec, seed=0), _trees.make(spec, seed=1, scale=1.0)
  kwargs = VARIANTS[variant]
  tx = _trees.muon_optimizer() if kwargs is None else _trees.root_optimizer(ns_coeffs="muon", **kwargs)
  state = tx.init(params)

  def step(p, s, g):
    updates, s = tx.update(g, s, p)
    return optax.apply_updates(p, updates), s

  wall, cpu = time.perf_counter(), time.process_time()
  compiled = jax.jit(step).lower(params, state, grads).compile()
  out = {"compile_s": time.perf_counter() - wall, "compile_cpu_s": time.process_time() - cpu}
  carry = [params, state]

  def run():
    carry[0], carry[1] = compiled(carry[0], carry[1], grads)
    return carry[0]
  _harness.block(run())
  out["step_s"] = _harness.median([_harness.timed(run) for _ in range(repeats)])
  return out


def _in_new_process(tree: str, variant: str, repeats: int) -> dict:
  command = [sys.executable, __file__, "--worker", json.dumps([tree, variant]), "--repeats", str(repeats)]
  out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  p = _harness.parser(__doc__.splitlines()[0], repeats=3)
  p.add_argument("--trees", default="", help="comma list of tree names, or 'all'")
  p.add_argument("--variants", default=",".join(VARIANTS),
                 help="comma list of the variants to run (optax Muon, the reference, always runs)")
  p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  variants = [v for v in VARIANTS if v in args.variants.split(",") or VARIANTS[v] is None]
  unknown = set(args.variants.split(",")) - set(VARIANTS)
  if unknown:
    p.error(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
  if args.worker:
    tree, variant = json.loads(args.worker)
    print(json.dumps(measure(tree, variant, args.repeats)))
    return
  rows = []
  for tree in _trees.names(args.trees, args.quick):
    measured = {v: _in_new_process(tree, v, args.repeats) for v in variants}
    muon = measured["optax Muon"]
    for variant, m in measured.items():
      rows.append({"tree": tree, "variant": variant, "step_s": m["step_s"],
                   "step_vs_muon": m["step_s"] / muon["step_s"], "compile_s": m["compile_s"],
                   "compile_cpu_s": m["compile_cpu_s"],
                   "compile_vs_muon": m["compile_s"] / muon["compile_s"]})
      print(json.dumps(rows[-1]), flush=True)
  _harness.print_table(rows, ["tree", "variant", "step_s", "step_vs_muon", "compile_s",
                              "compile_cpu_s", "compile_vs_muon"],
                       f"root() stages switched off, one new process per row; step: median of {args.repeats}")
  _harness.write_json(args.json, "stage_cost", args, rows)


if __name__ == "__main__":
  main()
