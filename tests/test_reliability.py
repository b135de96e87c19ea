"""Reliability of `root()` end to end: numerical edge cases and determinism.

Every edge-case input must give a finite update equal to the NumPy restatement
of the step in `_reference.py`. (Argument validation is `test_validation.py`,
coefficient safety `test_coefficients.py`.)
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax

MUON = (3.4445, -4.7750, 2.0315)
LR = 0.01


# --------------------------------------------------------------------------- #
# 1. Numerics: every edge case in one tree, checked against the reference.   #
# --------------------------------------------------------------------------- #

def _fills(dtype):
  """Gradient generators ``(rng, shape) -> float64``; magnitudes fit ``dtype``."""
  huge, tiny = {"float16": (3e3, 1e-3)}.get(jnp.dtype(dtype).name, (1e30, 1e-30))

  def zero_row(rng, s):
    g = rng.normal(size=s)
    g[0] = 0.0
    return g

  def zero_col(rng, s):
    g = rng.normal(size=s)
    g[:, -1] = 0.0
    return g

  return {
      "zero": lambda rng, s: np.zeros(s),
      "zero_row": zero_row,
      "zero_col": zero_col,
      "equal": lambda rng, s: np.full(s, 0.375),
      "huge": lambda rng, s: rng.normal(size=s) * huge,
      "tiny": lambda rng, s: rng.normal(size=s) * tiny,
      "normal": lambda rng, s: rng.normal(size=s),
  }


_SHAPES = [(1, 7), (7, 1), (1, 1), (6, 10), (16, 4096), (4096, 16)]
# Relative error of an update against the float64 reference: float32 is
# exact up to rounding; bf16/f16 run Newton-Schulz in 8/11-bit mantissas.
_TOLERANCE = {"float32": 1e-4, "bfloat16": 0.15, "float16": 0.05}


_BIG_FILLS = ("huge", "tiny", "zero_row")  # the 16x4096 pair: the fills that stress scale


def _fill_names(dtype, shape):
  names = tuple(_fills(dtype))
  return _BIG_FILLS if shape[0] * shape[1] > 1000 else names


def _gradient_batch(dtype, shape, step):
  """A ``(fills, m, n)`` float64 gradient; the same draws for every dtype."""
  rng = np.random.default_rng([step, *shape])
  fills = _fills(dtype)
  return np.stack([fills[f](rng, shape) for f in _fill_names(dtype, shape)])


def _reference_update(g, buf):
  """`_reference.root_matrix_step` from zero weights; tall inputs run transposed
  (the same arithmetic: the reference transposes them itself), which keeps
  NumPy's matmuls on contiguous arrays."""
  if g.shape[0] > g.shape[1]:
    update, buf = _reference_update(g.T, buf.T)
    return update.T, buf.T
  return _reference.root_matrix_step(np.zeros(g.shape), g, buf, LR, [MUON] * 5)


def test_edge_case_matrices_are_finite_and_match_reference():
  # Each leaf is a batch of matrices (zero, zero row, ..., 1e30, 1e-30) that
  # share one quantile pass and one Newton-Schulz stack, yet must not
  # influence each other; all dtypes run in one compiled step. The reference
  # sees the unrounded float64 gradient.
  keys = [(d, s) for d in _TOLERANCE for s in _SHAPES]
  name = lambda d, s: f"{d}_{s[0]}x{s[1]}"
  params = {name(d, s): np.zeros((len(_fill_names(d, s)),) + s, jnp.dtype(d)) for d, s in keys}
  params["bias"] = np.zeros(5, np.float32)
  params = jax.tree.map(jnp.asarray, params)
  dims = {k: root_optax.DimensionNumbers(1, 2) for k in params}
  dims["bias"] = None
  tx = root_optax.root(LR, variant="paper", ns_coeffs=MUON, muon_weight_dimension_numbers=dims)
  update = jax.jit(tx.update)
  state = jax.jit(tx.init)(params)
  scales = lambda d: (_fills(d)["huge"](np.random.default_rng(0), (1, 1)).item(),)
  buffers, references = {}, {}
  for step in range(2):
    grads64 = {name(d, s): _gradient_batch(d, s, step) for d, s in keys}
    grads = {k: jnp.asarray(g.astype(params[k].dtype)) for k, g in grads64.items()}
    grads["bias"] = jnp.ones(5)
    updates, state = update(grads, state, params)
    for d, s in keys:
      k = name(d, s)
      assert updates[k].dtype == jnp.dtype(d), k
      got_all = np.asarray(updates[k]).astype(np.float64)  # a NumPy cast: no compile
      for i, fill in enumerate(_fill_names(d, s)):
        got, g = got_all[i], grads64[k][i]
        ref_key = (s, fill, scales(d), step)  # float32 and bfloat16 share a reference
        if ref_key not in references:
          buf = buffers.get(ref_key[:-1], np.zeros(s))
          references[ref_key], buffers[ref_key[:-1]] = _reference_update(g, buf)
        want, where = references[ref_key], f"{k}[{fill}]"
        assert np.all(np.isfinite(got)), where
        if not np.any(g):  # "zero", or the zero row of a 1xN matrix
          np.testing.assert_array_equal(got, 0.0, err_msg=where)
          continue
        err = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert err < _TOLERANCE[d], (where, err)
        if fill == "zero_row":
          np.testing.assert_array_equal(got[0], 0.0, err_msg=where)
        if fill == "zero_col":
          np.testing.assert_array_equal(got[:, -1], 0.0, err_msg=where)
  leaves = [np.asarray(x).astype(np.float64) for x in jax.tree.leaves((updates, state))]
  assert all(np.all(np.isfinite(x)) for x in leaves)


# The robust default's edge cases: each (shape, fill) its own 2-D leaf, since the
# burst guard measures a leaf's norm. bfloat16 runs in the same step as float32.
_DEFAULT_DTYPES = ("float32", "bfloat16")
_DEFAULT_SHAPES = [(1, 7), (7, 1), (1, 1), (6, 10)]


def _default_reference(variant, g, state):
  """One float64 step of ``root(LR)`` or ``root(LR, variant="paper")`` from zero
  weights; ``state``: None before the first step. Returns (update, state)."""
  if variant == "paper":
    buf = np.zeros(g.shape) if state is None else state
    return _reference_update(g, buf)
  if state is None:
    state = (np.zeros(g.shape), 0.0, (np.zeros(g.shape[0]), np.zeros(g.shape[1])))
  k = root_optax._src.variants.VARIANT_DEFAULTS["robust"]["outlier_gate"]
  w, buf, ema, history, _ = _reference.robust_matrix_step(
      np.zeros(g.shape), g, *state, LR, [MUON] * 5, k=k)
  return w, (buf, ema, history)


@pytest.mark.parametrize("variant", ["robust", "paper"])
def test_default_step_on_edge_cases_matches_float64_reference_in_bf16(variant):
  """`root(lr)` and `root(lr, variant="paper")` as built by default, on the
  edge cases above, 2 steps: within 1e-4 (float32) and 0.15 (bfloat16) relative
  error of the float64 NumPy step (which sees the unrounded gradient); zero
  gradients, rows and columns give exact zeros."""
  keys = [(d, s, f) for d in _DEFAULT_DTYPES for s in _DEFAULT_SHAPES for f in _fills(d)]
  name = lambda d, s, f: f"{d}_{s[0]}x{s[1]}_{f}"
  params = {name(*k): jnp.zeros(k[1], jnp.dtype(k[0])) for k in keys}
  # By default 1xN and Nx1 leaves go to AdamW (vectors); labelled 'root', ROOT's step runs on them.
  tx = root_optax.root(LR, variant=variant, param_labels=jax.tree.map(lambda _: "root", params))
  update, state = jax.jit(tx.update), jax.jit(tx.init)(params)
  references = {}  # float32 and bfloat16 see the same float64 gradient: one reference
  for step in range(2):
    grads64 = {name(d, s, f): _fills(d)[f](np.random.default_rng([step, *s]), s)
               for d, s, f in keys}
    grads = {k: jnp.asarray(g, params[k].dtype) for k, g in grads64.items()}
    # Table 1 has none of these shapes: the paper's step says so once, when traced.
    with (pytest.warns(UserWarning, match="'paper' have no entry") if variant == "paper" and step == 0
          else contextlib.nullcontext()):
      updates, state = update(grads, state, params)
    for d, s, f in keys:
      k, ref_key = name(d, s, f), (s, f)
      want, references[ref_key, step] = _default_reference(
          variant, grads64[k], references.get((ref_key, step - 1)))
      got = np.asarray(updates[k]).astype(np.float64)
      assert updates[k].dtype == jnp.dtype(d) and np.all(np.isfinite(got)), k
      if not np.any(grads64[k]):
        np.testing.assert_array_equal(got, 0.0, err_msg=k)
        continue
      err = np.linalg.norm(got - want) / np.linalg.norm(want)
      assert err < _TOLERANCE[d], (k, step, err)
      if f == "zero_row":
        np.testing.assert_array_equal(got[0], 0.0, err_msg=k)
      if f == "zero_col":
        np.testing.assert_array_equal(got[:, -1], 0.0, err_msg=k)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_nonfinite_gradient_entry_makes_the_step_nonfinite(bad):
  # The reference computes m - T_eps[m] = inf - inf = NaN; a clip would
  # silently hide an infinite momentum buffer behind a healthy-looking step.
  params = {"w": jnp.zeros((4, 6)), "ok": jnp.zeros((4, 6))}
  grads = {"w": jnp.ones((4, 6)).at[1, 2].set(bad), "ok": jnp.ones((4, 6))}
  tx = root_optax.root(LR, ns_coeffs=MUON)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert not np.any(np.isfinite(updates["w"]))
  assert np.all(np.isfinite(updates["ok"]))


# --------------------------------------------------------------------------- #
# 2. Determinism: same seed, same parameters, with a fresh trace and compile. #
# --------------------------------------------------------------------------- #

def _train(seed, step=None, steps=8):
  """Trains a small net; returns its parameters and the jitted step used."""
  keys = jax.random.split(jax.random.key(seed), 4)
  params = {"w1": jax.random.normal(keys[0], (16, 16)), "w2": jax.random.normal(keys[1], (16, 16)),
            "b": jnp.zeros(16)}
  x = jax.random.normal(keys[2], (64, 16))
  y = jax.random.normal(keys[3], (64, 16))
  tx = root_optax.root(optax.cosine_decay_schedule(0.05, steps), ns_coeffs=MUON)
  state = tx.init(params)

  def train_step(params, state, x, y):
    loss = lambda p: jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] + p["b"] - y) ** 2)
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  step = step or jax.jit(train_step)  # a new function: traced and compiled anew
  for _ in range(steps):
    params, state = step(params, state, x, y)
  return params, step


def test_two_runs_with_one_seed_give_identical_parameters():
  first, _ = _train(0)
  second, step = _train(0)
  other_seed, _ = _train(1, step)
  for k in first:
    np.testing.assert_array_equal(first[k], second[k], err_msg=k)
  assert not np.array_equal(first["w1"], other_seed["w1"])
