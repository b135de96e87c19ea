"""Reliability: hyper-parameter validation, numerical edge cases, coefficient safety.

Every bad argument must fail when the transform is built, with an error naming
the argument, the value and what is allowed. Every edge-case input must give a
finite update equal to the NumPy restatement of the step in `_reference.py`.
"""

import contextlib
import inspect
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax
from root_optax import coefficients

MUON = (3.4445, -4.7750, 2.0315)
LR = 0.01


# --------------------------------------------------------------------------- #
# 1. Hyper-parameters: (builder, error type, regex naming argument and value). #
# --------------------------------------------------------------------------- #

def _root(**kw):
  return lambda: root_optax.root(LR, **kw)


_BAD_ARGUMENTS = {
    # root()
    "lr_str": (lambda: root_optax.root("fast"), TypeError, r"learning_rate .*real number.*'fast'"),
    "lr_negative": (lambda: root_optax.root(-1.0), ValueError, r"learning_rate must be >= 0.*-1\.0"),
    "lr_nan": (lambda: root_optax.root(float("nan")), ValueError, r"learning_rate must be finite.*nan"),
    "adam_lr": (_root(adam_learning_rate=-0.1), ValueError, r"adam_learning_rate must be >= 0.*-0\.1"),
    "beta_1": (_root(beta=1.0), ValueError, r"beta must be in \[0\.0, 1\.0\).*1\.0"),
    "beta_neg": (_root(beta=-0.5), ValueError, r"beta must be in \[0\.0, 1\.0\).*-0\.5"),
    "unknown_keyword": (_root(lerning_rate=0.1), TypeError, r"unexpected keyword argument 'lerning_rate'"),
    "nesterov": (_root(nesterov=1), TypeError, r"nesterov must be a bool.*1"),
    "quantile_0": (_root(quantile=0.0), ValueError, r"quantile must be in \(0\.0, 1\.0\].*0\.0"),
    "quantile_big": (_root(quantile=1.5), ValueError, r"quantile must be in \(0\.0, 1\.0\].*1\.5"),
    "quantile_str": (_root(quantile="0.9"), TypeError, r"quantile must be a real number.*'0\.9'"),
    "quantile_vec": (_root(quantile=np.array([0.5, 0.9])), ValueError, r"quantile must be a scalar.*\(2,\)"),
    "threshold": (_root(threshold=-1.0), ValueError, r"threshold must be >= 0.*-1\.0"),
    "threshold_method": (_root(threshold_method="sort"), ValueError,
                         r"threshold_method must be one of \('exact', 'fast'\).*'sort'"),
    "ns_method": (_root(ns_method="fastest"), ValueError,
                  r"ns_method must be one of \('auto', 'standard', 'gram'\).*'fastest'"),
    "gram_restarts": (lambda: root_optax.newton_schulz(jnp.ones((3, 9)), [(3.4445, -4.775, 2.0315)] * 5,
                                                       gram_restarts=(5,)),
                      ValueError, r"gram_restarts must be step indices in \[1, 4\]"),
    "rank_tolerance": (_root(threshold_rank_tolerance=1.0), ValueError,
                       r"threshold_rank_tolerance must be in \[0\.0, 1\.0\).*1\.0"),
    "ns_steps_0": (_root(ns_steps=0), ValueError, r"ns_steps must be an int >= 1.*0"),
    "ns_steps_float": (_root(ns_steps=2.0), TypeError, r"ns_steps must be an int >= 1.*2\.0"),
    "ns_steps_array": (_root(ns_steps=jnp.asarray(5)), TypeError, r"ns_steps must be a static.*static_args"),
    "preconditioning": (_root(preconditioning="l2"), ValueError,
                        r"preconditioning must be one of \('frobenius', 'schatten', 'schatten4', 'aol', 'spectral'\).*'l2'"),
    "auto_aol": (_root(ns_coeffs="auto", preconditioning="aol"), ValueError, r"'auto' can be fitted for normalization.*'aol'"),
    "eps": (_root(eps=-1e-7), ValueError, r"eps must be >= 0.*-1e-07"),
    "compute_dtype_int": (_root(compute_dtype=jnp.int32), TypeError, r"compute_dtype .*floating.*int32"),
    "compute_dtype_str": (_root(compute_dtype="float33"), TypeError, r"compute_dtype .*floating.*'float33'"),
    "mu_dtype": (_root(mu_dtype="float33"), TypeError, r"mu_dtype .*floating.*'float33'"),
    "consistent_rms": (_root(consistent_rms=0.0), ValueError, r"consistent_rms must be in \(0\.0, inf\].*0\.0"),
    "weight_decay": (_root(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0.*-0\.1"),
    "adam_weight_decay": (_root(adam_weight_decay=-1.0), ValueError, r"adam_weight_decay must be >= 0.*-1\.0"),
    "weight_decay_mask": (_root(weight_decay_mask={"w": "yes"}), TypeError, r"weight_decay_mask .*bools.*'yes'"),
    "param_labels": (_root(param_labels={"w": "muon"}), ValueError,
                     r"param_labels leaves must be one of \('root', 'adam'\).*'muon'"),
    "dimension_numbers": (_root(muon_weight_dimension_numbers={"w": 3}), TypeError,
                          r"muon_weight_dimension_numbers .*type int"),
    "adam_b1": (_root(adam_b1=1.0), ValueError, r"adam_b1 must be in \[0\.0, 1\.0\).*1\.0"),
    "adam_b2": (_root(adam_b2=-0.1), ValueError, r"adam_b2 must be in \[0\.0, 1\.0\).*-0\.1"),
    "adam_eps": (_root(adam_eps=0.0), ValueError, r"adam_eps must be in \(0\.0, inf\].*0\.0"),
    "adaptive": (_root(adaptive=1), TypeError, r"adaptive must be a bool.*1"),
    "ano_adaptive": (lambda: root_optax.ada_newton_orthogonalize(adaptive="yes"), TypeError,
                     r"adaptive must be a bool.*'yes'"),
    # Coefficient tables.
    "coeff_shape": (_root(ns_coeffs=[[1.0, 2.0], [3.0, 4.0]]), ValueError,
                    r"ns_coeffs must have shape \(3,\) or \(T, 3\).*\(2, 2\)"),
    "coeff_inf": (_root(ns_coeffs=(1.0, 2.0, float("inf"))), ValueError, r"ns_coeffs must be finite.*inf"),
    "coeff_nan_entry": (_root(ns_coeffs={"4x8": (1.0, float("nan"), 2.0)}), ValueError,
                        r"coefficients\['custom'\]\[4x8\] must be finite.*nan"),
    "coeff_type": (_root(ns_coeffs=3), TypeError, r"ns_coeffs must be a preset name.*int"),
    "coeff_too_long": (_root(ns_coeffs=[MUON] * 6), ValueError, r"6 per-iteration triples but ns_steps=5"),
    "coeff_preset": (_root(ns_coeffs="no-such-preset"), ValueError, r"preset in \(.*'paper'.*'no-such-preset'"),
    "coeff_key": (_root(ns_coeffs={"16by32": MUON}), ValueError, r"key must look like '768x3072'.*'16by32'"),
    "coeff_key_zero": (_root(ns_coeffs={"0x4": MUON}), ValueError, r"two positive sizes.*\(0, 4\)"),
    "table_normalization": (lambda: root_optax.CoefficientTable("t", MUON, {}, normalization="l2"), ValueError,
                            r"normalization must be one of.*'l2'"),
    "table_default": (lambda: root_optax.CoefficientTable("t", (1.0, 2.0), {}), ValueError,
                      r"coefficients\['t'\]\['default'\] must have shape.*\(1, 2\)"),
    # The transforms and kernels, called directly.
    "sto_quantile": (lambda: root_optax.soft_threshold_outliers(quantile=2.0), ValueError, r"quantile .*2\.0"),
    "sto_offset": (lambda: root_optax.soft_threshold_outliers(offset=-1.0), ValueError, r"offset must be >= 0.*-1\.0"),
    "sto_method": (lambda: root_optax.soft_threshold_outliers(method="sort"), ValueError, r"method must be one of.*'sort'"),
    "sto_track": (lambda: root_optax.soft_threshold_outliers(track_outliers="yes"), TypeError,
                  r"track_outliers must be a bool.*'yes'"),
    "ada_max_gain": (lambda: root_optax.ada_newton_orthogonalize(max_gain=0.5), ValueError, r"max_gain must be >= 1.*0\.5"),
    "ada_precision": (lambda: root_optax.ada_newton_orthogonalize(precision="ultra"), ValueError,
                      r"precision must be a precision jnp.matmul accepts, got 'ultra'"),
    "ada_ns_steps": (lambda: root_optax.ada_newton_orthogonalize(ns_steps=-2), ValueError, r"ns_steps must be an int >= 1.*-2"),
    "shape_mode": (lambda: root_optax.scale_by_shape(mode="l2"), ValueError, r"mode must be one of.*'l2'"),
    "shape_rms": (lambda: root_optax.scale_by_shape(rms=-1.0), ValueError, r"rms must be in \(0\.0, inf\].*-1\.0"),
    "trace_decay": (lambda: root_optax.trace(decay=1.5), ValueError, r"decay must be in \[0\.0, 1\.0\).*1\.5"),
    "trace_dtype": (lambda: root_optax.trace(accumulator_dtype=jnp.int8), TypeError, r"accumulator_dtype .*int8"),
    "ns_rank": (lambda: root_optax.newton_schulz(jnp.ones(3), MUON), ValueError, r"\(\.\.\., m, n\).*\(3,\)"),
    "ns_eps": (lambda: root_optax.newton_schulz(jnp.ones((2, 2)), MUON, eps=-1.0), ValueError, r"eps must be >= 0.*-1\.0"),
    "ns_coeffs": (lambda: root_optax.newton_schulz(jnp.ones((2, 2)), (1.0, 2.0)), ValueError, r"shape \(3,\) or \(T, 3\)"),
    "ns_dtype": (lambda: root_optax.newton_schulz(jnp.ones((2, 2)), MUON, compute_dtype=jnp.int32), TypeError,
                 r"compute_dtype .*int32"),
    "exact_q": (lambda: root_optax.exact_abs_quantile(jnp.ones((2, 2)), 1.5), ValueError, r"quantile must be in \[0\.0, 1\.0\].*1\.5"),
    "exact_rank": (lambda: root_optax.exact_abs_quantile(jnp.ones(4), 0.5), ValueError, r"last two axes.*\(4,\)"),
    "fast_q": (lambda: root_optax.fast_abs_quantiles([jnp.ones((2, 2))], -0.1), ValueError, r"quantile .*-0\.1"),
    "soft_eps": (lambda: root_optax.soft_threshold(jnp.ones((2, 2)), -1.0), ValueError, r"eps must be >= 0.*-1\.0"),
    "split_eps": (lambda: root_optax.split_outliers(jnp.ones((2, 2)), np.array([0.1, np.nan])), ValueError,
                  r"eps must be >= 0.*nan"),
    "envelope_steps": (lambda: root_optax.polynomial_envelope(MUON, 0), ValueError, r"ns_steps must be an int >= 1.*0"),
    "envelope_points": (lambda: root_optax.polynomial_envelope(MUON, 5, num_points=1), ValueError, r"num_points must be >= 2.*1"),
    "envelope_min": (lambda: root_optax.polynomial_envelope(MUON, 5, min_input=2.0), ValueError, r"min_input .*2\.0"),
    "composed_steps": (lambda: root_optax.composed_polynomial(MUON, np.ones(2), -1), ValueError, r"ns_steps .*-1"),
    "unsafe_gain": (lambda: coefficients.unsafe_entries(root_optax.load_coefficients("muon"), 5, 0.9), ValueError,
                    r"max_gain must be >= 1.*0\.9"),
    "route_str": (lambda: root_optax.route_by_path("embed"), TypeError, r"adam must be a sequence of strings.*'embed'"),
    "route_items": (lambda: root_optax.route_by_path(["embed", 3]), TypeError, r"adam must be a sequence of strings"),
}


@pytest.mark.parametrize("case", sorted(_BAD_ARGUMENTS))
def test_bad_argument_fails_at_build_time_naming_it(case):
  build, error, pattern = _BAD_ARGUMENTS[case]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(error, match=pattern):
      build()


def test_good_arguments_build_without_warnings():
  # The counterpart of the table above: the checks must not reject valid input.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    root_optax.root(optax.constant_schedule(0.1), beta=0.0, quantile=1.0, threshold=0.0,
                    compute_dtype=jnp.bfloat16, mu_dtype="float32", consistent_rms=None,
                    weight_decay_mask={"w": True, "b": np.bool_(False)}, param_labels={"w": "root", "b": "adam"},
                    adam_learning_rate=jnp.asarray(0.0), ns_coeffs=[MUON, (1.875, -1.25, 0.375)])
    root_optax.ada_newton_orthogonalize(precision="highest")
    root_optax.route_by_path(["embed"])
    root_optax.CoefficientTable("t", MUON, {(8, 4): [MUON]})


@pytest.mark.parametrize("suffix, text", [(".json", '{"4x4": [1, 2, 3],'), (".yaml", "4x4: [1, 2\n  - : ]")])
def test_table_file_that_does_not_parse_names_the_file(tmp_path, suffix, text):
  path = tmp_path / f"broken{suffix}"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"broken\\{suffix}"):
    root_optax.root(LR, ns_coeffs=str(path))


def test_table_file_with_bad_entry_names_the_entry(tmp_path):
  path = tmp_path / "table.json"
  path.write_text(json.dumps({"shapes": {"4x8": [1.0, 2.0]}}))
  with pytest.raises(ValueError, match=r"coefficients\['table\.json'\]\[4x8\] must have shape"):
    root_optax.root(LR, ns_coeffs=str(path))
  path.write_text(json.dumps([MUON]))
  with pytest.raises(ValueError, match="must hold a mapping, got list"):
    root_optax.root(LR, ns_coeffs=str(path))


def test_shipped_preset_that_does_not_parse_names_the_file(tmp_path, monkeypatch):
  package = tmp_path / "fake_presets"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "coefficients.json").write_text(json.dumps({"muon": {"default": list(MUON)}}))
  (package / "preset_broken.json").write_text("{ not json")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(coefficients, "_DATA_PACKAGE", "fake_presets")
  with pytest.raises(ValueError, match="preset_broken.json"):
    root_optax.preset_names()


def test_complex_root_leaf_is_a_clear_error_and_adam_takes_it():
  params = {"w": jnp.ones((4, 6), jnp.complex64), "v": jnp.ones((4, 6))}
  # Labelled 'root' explicitly: refused, naming the leaf and its dtype.
  with pytest.raises(TypeError, match=r"\['w'\] has dtype complex64.*'adam'"):
    root_optax.root(LR, param_labels={"w": "root", "v": "root"}).init(params)
  # By default (and with param_labels) AdamW takes it: the same update either way.
  tx = root_optax.root(LR, param_labels={"w": "adam", "v": "root"})
  default = root_optax.root(LR)
  grads0 = {"w": jnp.full((4, 6), 1 + 2j, jnp.complex64), "v": jnp.ones((4, 6))}
  np.testing.assert_allclose(jax.jit(default.update)(grads0, default.init(params), params)[0]["w"],
                             jax.jit(tx.update)(grads0, tx.init(params), params)[0]["w"], rtol=1e-6)
  grads = {"w": jnp.full((4, 6), 1 + 2j, jnp.complex64), "v": jnp.ones((4, 6))}
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # AdamW's first step from zero moments, by hand: m_hat = g, v_hat = |g|^2.
  g = np.asarray(grads["w"])
  expected = -LR * (g / (np.abs(g) + 1e-8) + 0.1 * np.asarray(params["w"]))
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-5)


# --------------------------------------------------------------------------- #
# 2. Numerics: every edge case in one tree, checked against the reference.   #
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
  k = root_optax.alias.VARIANT_DEFAULTS["robust"]["outlier_gate"]
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


@pytest.mark.parametrize("method", ["exact", "fast"])
def test_all_equal_entries_are_not_clipped(method):
  # quantile == every |entry|: eps = v + 1e-9 >= v, so nothing is an outlier.
  m = jnp.full((3, 5, 7), -0.25, jnp.float32)
  tx = root_optax.soft_threshold_outliers(0.9, method=method, track_outliers=True,
                                          weight_dimension_numbers=root_optax.DimensionNumbers(1, 2))
  out, state = jax.jit(tx.update)({"m": m}, tx.init({"m": m}))
  np.testing.assert_array_equal(out["m"], m)
  assert float(state.outlier_fraction["m"]) == 0.0


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
# 3. Coefficient safety of every shipped preset.                              #
# --------------------------------------------------------------------------- #

# Entries known to leave the [0, 1.5] band after 5 steps (REFERENCE.md: the
# authors' square triple sends 0.559 to 3.31). Any new preset must be safe.
_KNOWN_UNSAFE = {"reference": {"2048x2048"}}


def _independent_envelope(triples, ns_steps, grid):
  """Max and min of the composed quintic, composed by hand in float64."""
  triples = [tuple(t) for t in np.atleast_2d(triples)]
  triples += [triples[-1]] * (ns_steps - len(triples))
  y = grid.copy()
  for a, b, c in triples:
    y = a * y + b * y**3 + c * y**5
  return y


@pytest.mark.parametrize("preset", root_optax.preset_names())
def test_every_shipped_preset_stays_in_a_bounded_band(preset):
  table = root_optax.load_coefficients(preset)
  ns_steps = max(5, max(c.shape[0] for c in table.entries().values()))
  grid = np.linspace(0.0, 1.0, 200_001)
  flagged = set()
  for key, triples in table.entries().items():
    y = _independent_envelope(triples, ns_steps, grid)
    assert np.all(y[grid >= 1e-3] > 0), f"{preset}[{key}] flips the sign of a singular value"
    if np.max(np.abs(y)) > coefficients.DEFAULT_MAX_GAIN:
      flagged.add(key)
  assert flagged == _KNOWN_UNSAFE.get(preset, set())
  assert set(coefficients.unsafe_entries(table, ns_steps)) == flagged


def test_reference_square_triple_overshoots_on_a_real_matrix_and_warns():
  # Rank 2 with normalised singular values (0.5591, 0.8291): the first sits
  # on the triple's peak, so 5 steps leave a singular value of ~3.3, not ~1.
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(64, 2)))
  v, _ = np.linalg.qr(rng.normal(size=(96, 2)))
  x = jnp.asarray(u @ np.diag([0.5591, np.sqrt(1 - 0.5591**2)]) @ v.T, jnp.float32)
  s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)[:2] / np.linalg.norm(np.asarray(x, np.float64))
  reference = root_optax.load_coefficients("reference").shapes[(2048, 2048)]
  grown = np.linalg.norm(root_optax.newton_schulz(x, np.repeat(reference, 5, 0)), 2)
  expected = np.max(_independent_envelope(reference, 5, s))
  assert grown == pytest.approx(expected, rel=1e-3) and grown > 3.0
  paper = root_optax.load_coefficients("paper").shapes[(2048, 2048)]
  assert np.linalg.norm(root_optax.newton_schulz(x, np.repeat(paper, 5, 0)), 2) < 1.25
  with pytest.warns(UserWarning, match=r"'reference'\[2048x2048\].*0\.559.*3\.31"):
    root_optax.root(LR, ns_coeffs="reference")


def test_defaults_do_not_use_the_flagged_triple_and_build_silently():
  assert inspect.signature(root_optax.ada_newton_orthogonalize).parameters["coefficients"].default == "auto"
  assert root_optax.alias.VARIANT_DEFAULTS["robust"]["ns_coeffs"] == "muon"
  assert root_optax.alias.VARIANT_DEFAULTS["paper"]["ns_coeffs"] == "paper"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    root_optax.root(LR)
    root_optax.ada_newton_orthogonalize()


@pytest.mark.parametrize("spec, warns", [(MUON, False), ("muon", False), ({"4x4": MUON}, True)])
def test_only_shape_keyed_tables_warn_about_unknown_shapes(spec, warns):
  tree = {"w": jax.ShapeDtypeStruct((6, 10), jnp.float32)}
  tx = root_optax.ada_newton_orthogonalize(spec)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.eval_shape(tx.update, tree, tx.init(tree))  # traces, compiles nothing
  assert any("no entry for shapes 6x10" in str(w.message) for w in caught) == warns


# --------------------------------------------------------------------------- #
# 4. Determinism: same seed, same parameters, with a fresh trace and compile. #
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
