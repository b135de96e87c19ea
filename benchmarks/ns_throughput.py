"""Newton-Schulz throughput: achieved FLOP/s of batched NS vs a plain matmul.

For each ``(batch, n, m)`` stack and dtype: one jitted 5-step
``root_optax.newton_schulz`` in its standard and Gram forms (in bf16 the
Gram form restarts once, `newton_schulz.default_restarts`), and a plain batched ``(n x m) @ (m x n)`` matmul of
the same operands, the practical limit on the same machine. FLOPs are counted
explicitly (2 per multiply-add; `root_optax._src.newton_schulz.ns_flops`).
``ns_pct_of_matmul`` compares achieved FLOP/s; ``muon_equiv_gflops`` divides
the standard form's FLOPs by the time (the work optax's Muon would do).

  python benchmarks/ns_throughput.py          # n = 256 .. 1024 (~2 min)
  python benchmarks/ns_throughput.py --quick
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from root_optax._src import newton_schulz as ns_lib

import _harness

MUON5 = [(3.4445, -4.7750, 2.0315)] * 5
SHAPES = [(4, 256, 1024), (4, 512, 512), (4, 512, 2048), (2, 768, 768), (2, 768, 3072), (1, 1024, 1024),
          (1, 1024, 4096)]
QUICK = [(4, 256, 256), (4, 256, 1024), (2, 512, 512)]
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bench(shape, dtype_name, args) -> list[dict]:
  batch, n, m = shape
  dtype = DTYPES[dtype_name]
  x = jnp.asarray(np.random.default_rng(0).normal(size=shape), dtype)
  methods = ["standard", "gram"]
  fns = {"matmul": jax.jit(lambda v: jnp.matmul(v, jnp.swapaxes(v, -1, -2)))}
  for method in methods:
    fns[method] = jax.jit(lambda v, method=method: ns_lib.newton_schulz(v, MUON5, method=method))
  calls = {k: (lambda f=f: f(x)) for k, f in fns.items()}
  for call in calls.values():
    _harness.block(call())
  times = _harness.interleaved(calls, args.repeats)
  matmul_flops = 2 * batch * n * n * m
  matmul_rate = matmul_flops / _harness.median(times["matmul"])
  standard_flops = batch * ns_lib.ns_flops(n, m, 5, "standard")
  rows = []
  for method in methods:
    flops = batch * ns_lib.ns_flops(n, m, 5, method, len(ns_lib.default_restarts(5, dtype)))
    seconds = _harness.median(times[method])
    rows.append({
        "shape": f"{batch}x{n}x{m}", "dtype": dtype_name, "method": method,
        "ns_ms": 1e3 * seconds, "ns_gflops": flops / seconds / 1e9,
        "matmul_gflops": matmul_rate / 1e9,
        "ns_pct_of_matmul": 100 * (flops / seconds) / matmul_rate,
        "muon_equiv_gflops": standard_flops / seconds / 1e9,
        "times": times[method], "matmul_times": times["matmul"]})
  return rows


def main():
  p = _harness.parser(__doc__.splitlines()[0], repeats=5)
  p.add_argument("--dtypes", default="float32,bfloat16")
  args = p.parse_args()
  results = []
  for shape in QUICK if args.quick else SHAPES:
    for dtype_name in args.dtypes.split(","):
      results.extend(bench(shape, dtype_name, args))
      r = results[-1]
      print(f"{r['shape']} {dtype_name}: {r['ns_pct_of_matmul']:.1f}% of matmul", flush=True)
  _harness.print_table(results, [
      "shape", "dtype", "method", "ns_ms", "ns_gflops", "matmul_gflops", "ns_pct_of_matmul",
      "muon_equiv_gflops"], f"5-step Newton-Schulz vs plain matmul, median of {args.repeats}")
  _harness.write_json(args.json, "ns_throughput", args, results)


if __name__ == "__main__":
  main()
