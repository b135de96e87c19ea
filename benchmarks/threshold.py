"""Outlier-threshold cost: 'exact' (sort) vs 'fast' (counting search) vs the Newton-Schulz time.

Per matrix shape, on a stack of ``--batch`` matrices of that shape (ROOT
thresholds and orthogonalises same-shape matrices as one stack): the jitted
p = 0.90 quantile of ``|M|`` of each matrix by each method, one 5-step
Newton-Schulz of the same stack (``root_optax.newton_schulz``, its
default method), their ratio, and each fast variant's error against a
float64 ``numpy.quantile``: the rank error (how many entries lie between
the two values, as a share of the entries) and the relative value error.
'fast' is the default (exact order statistics, ``rank_tolerance=0``);
'fast@tol' stops within ``--tolerance`` of the entries. Runs alternate.

  python benchmarks/threshold.py            # shapes 256x256 .. 1024x4096 (~1 min)
  python benchmarks/threshold.py --quick    # 128x128 .. 512x512
  python benchmarks/threshold.py --quick --shapes 64x64,64x256 --batch 2 --repeats 1
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import _harness
import root_optax

MUON5 = [(3.4445, -4.7750, 2.0315)] * 5
SHAPES = [(256, 256), (256, 1024), (512, 512), (512, 2048), (768, 768), (768, 3072), (1024, 1024),
          (1024, 4096)]
QUICK = [(128, 128), (256, 256), (256, 1024), (512, 512)]
QUANTILE = 0.90


def rank_error(m: np.ndarray, value: float, reference: float) -> float:
  """Largest share, over the matrices, of entries of ``|m|`` strictly between ``value`` and ``reference``."""
  errors = []
  for matrix, v, r in zip(m, np.ravel(value), np.ravel(reference)):
    a = np.abs(matrix.astype(np.float64)).ravel()
    lo, hi = sorted((float(v), float(r)))
    errors.append(np.count_nonzero((a > lo) & (a < hi)) / a.size)
  return max(errors)


def bench_shape(shape, args, seed=0) -> dict:
  m_np = np.random.default_rng(seed).standard_t(3, size=(args.batch,) + shape).astype(np.float32)
  m = jnp.asarray(m_np)
  exact = jax.jit(lambda x: root_optax.exact_abs_quantile(x, QUANTILE))
  fast = jax.jit(lambda x: root_optax.fast_abs_quantiles([x], QUANTILE)[0])
  loose = jax.jit(lambda x: root_optax.fast_abs_quantiles([x], QUANTILE, args.tolerance)[0])
  ns = jax.jit(lambda x: root_optax.newton_schulz(x, MUON5))
  fns = {"exact": lambda: exact(m), "fast": lambda: fast(m), "loose": lambda: loose(m), "ns": lambda: ns(m)}
  for fn in fns.values():
    _harness.block(fn())
  times = _harness.interleaved(fns, args.repeats)
  reference = np.quantile(np.abs(m_np.astype(np.float64)).reshape(args.batch, -1), QUANTILE, axis=-1)
  rel_error = lambda v: float(np.max(np.abs(np.asarray(v, np.float64) - reference) / reference))
  row = {"shape": f"{args.batch}x{shape[0]}x{shape[1]}"}
  for name in fns:
    row[f"{name}_ms"] = 1e3 * _harness.median(times[name])
  for name in ("exact", "fast", "loose"):
    row[f"{name}_over_ns_pct"] = 100 * _harness.paired_ratio(times[name], times["ns"])
  for name, fn in (("exact", exact), ("fast", fast), ("loose", loose)):
    value = fn(m)
    row[f"{name}_rank_error"] = rank_error(m_np, value, reference)
    row[f"{name}_rel_error"] = rel_error(value)
  row["times"] = times
  return row


def main():
  p = _harness.parser(__doc__.splitlines()[0], repeats=5)
  p.add_argument("--batch", type=int, default=4, help="matrices per stack")
  p.add_argument("--tolerance", type=float, default=1e-3, help="rank_tolerance of 'fast@tol'")
  p.add_argument("--shapes", default="", help="comma list like 64x64,64x256 (default: the "
                 "--quick or full list)")
  args = p.parse_args()
  shapes = ([tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")] if args.shapes
            else QUICK if args.quick else SHAPES)
  results = []
  for shape in shapes:
    results.append(bench_shape(shape, args))
    row = results[-1]
    print(f"{row['shape']}: fast {row['fast_over_ns_pct']:.2f}%, fast@tol {row['loose_over_ns_pct']:.2f}% of NS",
          flush=True)
  _harness.print_table(results, [
      "shape", "exact_ms", "fast_ms", "loose_ms", "ns_ms", "exact_over_ns_pct", "fast_over_ns_pct",
      "loose_over_ns_pct", "fast_rank_error", "loose_rank_error", "loose_rel_error", "exact_rel_error"],
      f"p={QUANTILE} quantile of |M| vs one 5-step Newton-Schulz of a stack of {args.batch}, median of "
      f"{args.repeats}; 'loose' = fast with rank_tolerance={args.tolerance}; rank errors as shares of the entries")
  _harness.write_json(args.json, "threshold", args, results)


if __name__ == "__main__":
  main()
