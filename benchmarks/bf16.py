"""bfloat16 Newton-Schulz: precision against float64 and float32, and its cost.

``root(compute_dtype=jnp.bfloat16)`` runs the Newton-Schulz iterations in
bfloat16 (the normalisation is accumulated in float32), in the standard
form; ``ns_method='gram'`` takes the Gram form, restarted once before step 2
(`root_optax.newton_schulz`'s ``gram_restarts``). Printed, for Muon's triple
at 5 steps (``root()``'s default):

1. Table 1 metric as the kernel computes it, ``||NS(G) - U V^T||_F^2 / min(m, n)``
   on Gaussian matrices, per dtype and form.
2. Ill-conditioned inputs (rank 4 plus 1e-3 noise; singular values ``k^-2``):
   relative error to the exact polynomial ``U g(S) V^T`` (float64) and the
   largest output singular value (1.2 is the polynomial's own maximum).
3. Fig. 2 analogue: relative error to the SVD polar factor on the recorded
   clipped momenta of a digits MLP (`precision.record_momenta`), mean over layers.
4. Time of the jitted batched kernel per form and dtype, side by side, on this backend.

  python benchmarks/bf16.py            # ~2 min on a 2-core CPU
  python benchmarks/bf16.py --quick    # tiny shapes, a smoke run (tests/test_benchmarks.py)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import root_optax
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import newton_schulz as ns_lib
from root_optax._src import polynomials

import _harness
import precision  # enables float64, for the references

MUON5 = polynomials.steps_schedule(coefficients_lib.MUON_COEFFICIENTS, 5)
# (label, compute dtype, method, gram_restarts); None: the default for the dtype.
VARIANTS = (
    ("float32 (auto form)", jnp.float32, "auto", None),
    ("bf16 standard ('auto')", jnp.bfloat16, "standard", None),
    ("bf16 Gram, no restart", jnp.bfloat16, "gram", ()),
    ("bf16 Gram + restart", jnp.bfloat16, "gram", None),
)


def _ns(x, steps, dtype, method, restarts):
  return np.asarray(root_optax.newton_schulz(
      jnp.asarray(x, jnp.float32), steps, compute_dtype=dtype, method=method,
      gram_restarts=restarts), np.float64)


def _exact_polynomial(x, steps):
  wide = x if x.shape[0] <= x.shape[1] else x.T
  wide = wide / (np.linalg.norm(wide) + 1e-7)
  u, s, vt = np.linalg.svd(wide, full_matrices=False)
  for a, b, c in np.asarray(steps, np.float64):
    s = a * s + b * s ** 3 + c * s ** 5
  out = (u * s) @ vt
  return out if x.shape[0] <= x.shape[1] else out.T


def _ill_conditioned(kind, shape, rng):
  m, n = shape
  if kind == "rank 4 + noise":
    return rng.normal(size=(m, 4)) @ rng.normal(size=(4, n)) + 1e-3 * rng.normal(size=shape)
  k = min(m, n)
  u, _ = np.linalg.qr(rng.normal(size=(m, k)))
  v, _ = np.linalg.qr(rng.normal(size=(n, k)))
  return (u * np.arange(1, k + 1) ** -2.0) @ v.T


def gaussian_rows(shapes, steps, seed):
  rows = []
  for shape in shapes:
    g = precision.gaussian(shape, seed)
    polar = precision.polar_factor(g)
    row = {"shape": f"{shape[0]}x{shape[1]}",
           "float32 form": ns_lib.resolve_method("auto", *shape, 5, jnp.float32)}
    for label, dtype, method, restarts in VARIANTS:
      diff = _ns(g, steps, dtype, method, restarts) - polar
      row[label] = float(np.sum(diff * diff) / min(shape))
    rows.append(row)
  return rows


def ill_conditioned_rows(shapes, steps, seed):
  rows = []
  rng = np.random.default_rng(seed)
  for shape in shapes:
    for kind in ("rank 4 + noise", "singular values k^-2"):
      x = _ill_conditioned(kind, shape, rng)
      exact = _exact_polynomial(x, steps)
      row = {"shape": f"{shape[0]}x{shape[1]}", "input": kind}
      for label, dtype, method, restarts in VARIANTS[1:]:
        out = _ns(x, steps, dtype, method, restarts)
        row[label] = (float(np.linalg.norm(out - exact) / np.linalg.norm(exact)),
                      float(np.linalg.norm(out, 2)))
      rows.append(row)
  return rows


def fig2_rows(train_steps, every, seed, steps, sizes=(64, 256, 1024, 256, 10)):
  recorded, _ = precision.record_momenta(train_steps, every, sizes, seed)
  rows = []
  for t, mats in recorded:
    polars = [precision.polar_factor(m) for m in mats]
    row = {"step": t}
    for label, dtype, method, restarts in VARIANTS:
      errs = [np.linalg.norm(_ns(m, steps, dtype, method, restarts) - p) / np.linalg.norm(p)
              for m, p in zip(mats, polars)]
      row[label] = float(np.mean(errs))
    rows.append(row)
  return rows, [m.shape for m in recorded[0][1]]


def timing_rows(stacks, steps, repeats):
  rows = []
  for count, m, n in stacks:
    x = jax.random.normal(jax.random.PRNGKey(0), (count, m, n), jnp.float32)
    fns = {}
    for label, dtype, method, restarts in VARIANTS:
      fn = jax.jit(lambda v, d=dtype, me=method, r=restarts: root_optax.newton_schulz(
          v, steps, compute_dtype=d, method=me, gram_restarts=r)).lower(x).compile()
      fns[label] = (lambda f=fn: f(x))
    for fn in fns.values():
      _harness.block(fn())
    times = _harness.interleaved(fns, repeats)
    row = {"stack": f"{count}x{m}x{n}"}
    base = _harness.median(times[VARIANTS[0][0]])
    for label, _, _, _ in VARIANTS:
      row[label] = f"{1e3 * _harness.median(times[label]):.1f} ms ({_harness.median(times[label]) / base:.2f}x)"
    rows.append(row)
  return rows


def _table(rows, title, fmt):
  cols = list(rows[0])
  print(f"\n{title}\n")
  print("| " + " | ".join(cols) + " |")
  print("|" + " --- |" * len(cols))
  for r in rows:
    print("| " + " | ".join(fmt(r[c]) for c in cols) + " |")


def _fmt(v):
  if isinstance(v, tuple):
    return f"{v[0]:.4f} (max s {v[1]:.2f})"
  if isinstance(v, float):
    return f"{v:.2e}" if v < 1e-3 else f"{v:.4f}"
  return str(v)


def main():
  p = _harness.parser(__doc__.splitlines()[0], repeats=5)
  p.add_argument("--seed", type=int, default=1)
  args = p.parse_args()
  steps = MUON5
  if args.quick:
    shapes, ill, stacks, train = [(16, 16), (16, 48)], [(16, 64)], [(1, 16, 48)], (4, 2, (64, 32, 10))
  else:
    shapes = [(512, 512), (512, 1536), (768, 3072), (1024, 256)]
    ill, stacks, train = [(256, 1024), (1024, 256)], [(8, 256, 1024), (4, 512, 512)], (200, 40)
  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}); Muon's triple, 5 steps")
  _table(gaussian_rows(shapes, steps, args.seed),
         "Table 1 metric ||NS(G) - U V^T||_F^2 / min(m, n), Gaussian G (float32 form: what 'auto' runs there)",
         _fmt)
  _table(ill_conditioned_rows(ill, steps, args.seed),
         "Ill-conditioned inputs: relative error to the exact polynomial U g(S) V^T (float64), "
         "and the largest output singular value", _fmt)
  rows, layers = fig2_rows(train[0], train[1], args.seed, steps, *train[2:])
  _table(rows, "Fig. 2 analogue: relative error to the polar factor on recorded clipped momenta "
         "(digits MLP, layers " + ", ".join(f"{m}x{n}" for m, n in layers) + "), mean over layers", _fmt)
  _table(timing_rows(stacks, steps, args.repeats),
         f"Kernel time on {jax.default_backend()}, median of {args.repeats} interleaved calls "
         "(ratio to float32)", str)


if __name__ == "__main__":
  main()
