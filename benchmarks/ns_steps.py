"""Fewer Newton-Schulz steps: fitted 4- and 3-step coefficients against Muon's triple at 5.

For every shape of the shipped ``'ada'`` table (the calibrated set), the
coefficients ``ns_coeffs='auto'`` fits for ``ns_steps`` = 4 and 3
(as ``'auto'`` fits them when a shape is first seen: Schatten-4
normalisation, proxies drawn with seed 0) are compared with Muon's triple at 5 and 4
steps (Frobenius normalisation, as optax) on:

1. the paper's Table 1 metric: mean over the singular values ``s`` of a
   held-out Gaussian matrix (``--seed``, default 1) of ``(g(s_hat) - 1)^2``;
2. the safety check: the largest value of the composed polynomial on
   ``[0, 1]`` (bound 1.5) and its smallest (a negative one flips a direction);
3. the Fig. 2 analogue: the relative error ``||NS(M) - U V^T||_F / ||U V^T||_F``
   on the momenta, clipped as ROOT's paper step does, of a short training run
   of an MLP on scikit-learn's digits (`precision.record_momenta`), at every
   recorded step and layer; the table gives the mean and the worst.

A fitted set passes where both of its errors are at most Muon's at 5 steps
and it is safe.

  python benchmarks/ns_steps.py                 # ~2 min on a 2-core CPU
  python benchmarks/ns_steps.py --quick         # 128x128, 3 steps, a small MLP: a smoke run
  python benchmarks/ns_steps.py --all --json ns_steps.json
"""

import argparse
import json
import sys
import time

import jax.numpy as jnp
import numpy as np

import precision
import root_optax
from root_optax._src import calibration
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import polynomials
from root_optax._src import spectra

MUON = np.asarray([coefficients_lib.MUON_COEFFICIENTS])
LARGE = {(4096, 4096), (8192, 8192), (2048, 16384)}  # only with --all
MLP_SIZES = (64, 256, 1024, 256, 10)  # the digits MLP whose momenta are recorded
QUICK = dict(shapes=[(128, 128)], steps="3", train_steps=10, record_every=5, sizes=(64, 32, 10))


def _sets(shape, steps):
  """``{name: (coefficients, ns_steps, normalization)}`` compared for one shape."""
  sets = {"Muon 5": (MUON, 5, "frobenius"), "Muon 4": (MUON, 4, "frobenius")}
  for k in steps:
    fit = calibration.coefficients_for_shape(shape, k, cache_dir=False)
    sets[f"auto {k}"] = (fit.coefficients, k, "schatten4")
  return sets


def _safety(coeffs, k):
  envelope = polynomials.polynomial_envelope(polynomials.steps_schedule(coeffs, k), k)
  x = np.linspace(0.0, 1.0, 20001)
  low = float(np.min(polynomials.composed_polynomial(polynomials.steps_schedule(coeffs, k), x, k)))
  return envelope.max_value, low


def gaussian_rows(shapes, steps, seed):
  rows = []
  for shape in shapes:
    s = spectra.matrix_singular_values(precision.gaussian(shape, seed))
    row = {"shape": f"{shape[0]}x{shape[1]}"}
    for name, (coeffs, k, norm) in _sets(shape, steps).items():
      high, low = _safety(coeffs, k)
      row[name] = {"table1": spectra.orthogonalization_error(coeffs, s, k, norm),
                   "max": high, "min": low}
    rows.append(row)
  return rows


def momentum_rows(steps, train_steps, every, seed, sizes=MLP_SIZES):
  recorded, _ = precision.record_momenta(train_steps, every, sizes, seed)
  shapes = sorted({m.shape for _, mats in recorded for m in mats})
  sets = {shape: _sets(shape, steps) for shape in shapes}
  errors = {shape: {name: [] for name in sets[shape]} for shape in shapes}
  for _, mats in recorded:
    for m in mats:
      polar = precision.polar_factor(m)
      for name, (coeffs, k, norm) in sets[m.shape].items():
        out = root_optax.newton_schulz(jnp.asarray(m, jnp.float32), polynomials.steps_schedule(coeffs, k),
                                       normalization=norm)
        errors[m.shape][name].append(
            float(np.linalg.norm(np.asarray(out, np.float64) - polar) / np.linalg.norm(polar)))
  return [{"shape": f"{s[0]}x{s[1]}", **{name: {"mean": float(np.mean(e)), "max": float(np.max(e))}
                                          for name, e in errors[s].items()}} for s in shapes]


def _passes(row, name, metric):
  return row[name][metric] <= row["Muon 5"][metric]


def _print_table(title, rows, steps, cell, passes):
  names = ["Muon 5", "Muon 4"] + [f"auto {k}" for k in steps]
  print(f"\n### {title}\n")
  print("| shape | " + " | ".join(names) + " | " + " | ".join(f"auto {k} <= Muon 5" for k in steps) + " |")
  print("|" + " --- |" * (1 + len(names) + len(steps)))
  for row in rows:
    verdicts = ["yes" if passes(row, f"auto {k}") else "no" for k in steps]
    print(f"| {row['shape']} | " + " | ".join(cell(row[n]) for n in names) + " | " + " | ".join(verdicts) + " |")


def print_gaussian(rows, steps):
  _print_table(
      "Table 1 metric on held-out Gaussian matrices; composed polynomial's range on [0, 1]", rows, steps,
      lambda r: f"{r['table1']:.2e} [{r['min']:.2f}, {r['max']:.2f}]",
      lambda row, n: _passes(row, n, "table1") and row[n]["max"] <= 1.5 and row[n]["min"] >= 0)


def print_momenta(rows, steps):
  _print_table(
      "Relative error to the polar factor on recorded momenta (mean / worst over recorded steps)", rows, steps,
      lambda r: f"{r['mean']:.3f} / {r['max']:.3f}", lambda row, n: _passes(row, n, "max"))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=1, help="seed of the held-out Gaussian matrices")
  parser.add_argument("--steps", default="4,3", help="step counts to fit, comma separated")
  parser.add_argument("--all", action="store_true", help="add 2048x16384, 4096x4096, 8192x8192 (slow)")
  parser.add_argument("--train-steps", type=int, default=200)
  parser.add_argument("--record-every", type=int, default=20)
  parser.add_argument("--json", default=None)
  parser.add_argument("--quick", action="store_true",
                      help="one shape (128x128), 3 steps, a 10-step run of a small MLP")
  args = parser.parse_args(argv)
  sizes = MLP_SIZES
  if args.quick:
    args.steps, args.train_steps, args.record_every = QUICK["steps"], QUICK["train_steps"], QUICK["record_every"]
    sizes = QUICK["sizes"]
  steps = [int(k) for k in args.steps.split(",") if k]
  start = time.perf_counter()
  shapes = [s for s in sorted(coefficients_lib.load_coefficients("ada").shapes) if args.all or s not in LARGE]
  if args.quick:
    shapes = QUICK["shapes"]
  results = {"gaussian": gaussian_rows(shapes, steps, args.seed)}
  print_gaussian(results["gaussian"], steps)
  results["momenta"] = momentum_rows(steps, args.train_steps, args.record_every, args.seed, sizes)
  print_momenta(results["momenta"], steps)
  print(f"\ntotal {time.perf_counter() - start:.0f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
