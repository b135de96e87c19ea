"""Tests for root_optax.root: the full step against a NumPy restatement."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax

# Two triples unlike Muon's, both safe on [0, 1] (the paper's 2048x2048 entry for 4x4):
# the unsafe reference-script triple would warn at every build.
TABLE = {"6x10": (3.0, -3.2, 1.2), "4x4": (3.3334, -4.2591, 1.7791)}
SHAPES = {"w_wide": (6, 10), "w_tall": (10, 6), "w_sq": (4, 4), "bias": (10,), "scale": (4,)}


def _params(seed):
  rng = np.random.default_rng(seed)
  return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


def _coeffs_for(shape):
  key = f"{min(shape)}x{max(shape)}"
  return [TABLE[key]] * 5


@pytest.mark.parametrize("nesterov", [True, False])
def test_root_matches_numpy_reference_over_steps(maybe_jit, nesterov):
  lr, wd, steps = 0.02, 0.1, 4
  params = _params(0)
  tx = root_optax.root(lr, variant="paper", ns_coeffs=TABLE, nesterov=nesterov,
                       threshold_method="exact")
  state = tx.init(jax.tree.map(jnp.asarray, params))
  update = maybe_jit(tx.update)
  jparams = jax.tree.map(jnp.asarray, params)
  ref = {k: v.astype(np.float64) for k, v in params.items()}
  bufs = {k: np.zeros(s) for k, s in SHAPES.items()}
  adam = {k: (np.zeros(s), np.zeros(s)) for k, s in SHAPES.items()}
  for t in range(1, steps + 1):
    grads = {k: v * 1.0 for k, v in _params(100 + t).items()}
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, jparams)
    jparams = optax.apply_updates(jparams, updates)
    for k, g in grads.items():
      g = g.astype(np.float64)
      if g.ndim == 2:
        ref[k], bufs[k] = _reference.root_matrix_step(
            ref[k], g, bufs[k], lr, _coeffs_for(g.shape), wd=wd, nesterov=nesterov)
      else:
        ref[k], m, v = _reference.adamw_step(ref[k], g, *adam[k], t, lr, wd=wd)
        adam[k] = (m, v)
  for k in SHAPES:
    np.testing.assert_allclose(jparams[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("burst_at", [None, 3])
def test_robust_variant_matches_numpy_reference_over_steps(maybe_jit, burst_at):
  lr, wd, steps = 0.02, 0.1, 5
  params = _params(0)
  tx = root_optax.root(lr, ns_coeffs=TABLE, threshold_method="exact")
  jparams = jax.tree.map(jnp.asarray, params)
  state, update = tx.init(jparams), maybe_jit(tx.update)
  ref = {k: v.astype(np.float64) for k, v in params.items()}
  bufs = {k: np.zeros(s) for k, s in SHAPES.items()}
  emas = {k: 0.0 for k in SHAPES}
  histories = {k: (np.zeros(s[0]), np.zeros(s[-1])) for k, s in SHAPES.items()}
  adam = {k: (np.zeros(s), np.zeros(s)) for k, s in SHAPES.items()}
  caught = {}
  for t in range(1, steps + 1):
    grads = {k: v * 1.0 for k, v in _params(100 + t).items()}
    if t == steps:
      grads["w_wide"][0, 0] = 50.0  # a spike beyond the gate's history: clipped
    if t == burst_at:
      grads = {k: 30.0 * g if g.ndim == 2 else g for k, g in grads.items()}
    updates, state = update(jax.tree.map(jnp.asarray, grads), state, jparams)
    jparams = optax.apply_updates(jparams, updates)
    for k, g in grads.items():
      g = g.astype(np.float64)
      if g.ndim == 2:
        ref[k], bufs[k], emas[k], histories[k], hit = _reference.robust_matrix_step(
            ref[k], g, bufs[k], emas[k], histories[k], lr, _coeffs_for(g.shape), wd=wd)
        caught[k] = caught.get(k, 0) + hit
      else:
        ref[k], m, v = _reference.adamw_step(ref[k], g, *adam[k], t, lr, wd=wd)
        adam[k] = (m, v)
  for k in SHAPES:
    np.testing.assert_allclose(jparams[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
  figures = root_optax.diagnostics(state)
  assert sum(caught.values()) == (3 if burst_at else 0)
  assert sum(v for k, v in figures.items() if k.endswith("/caught")) == sum(caught.values())
  # w_wide (6x10, one clipped entry) and w_tall (10x6, none) form the 6x10 group.
  assert figures["gradient_outliers/6x10/clipped_fraction"] == pytest.approx(1 / 120)


def test_new_shapes_train_with_adaptive_coefficients_and_no_warning(tmp_path):
  rng = np.random.default_rng(3)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
            for k, s in {"a": (96, 200), "b": (200, 96), "c": (33, 1000)}.items()}
  grads = jax.tree.map(lambda p: p[::-1] * 0.1, params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx = root_optax.root(1e-2, ns_coeffs="auto", calibration_cache_dir=str(tmp_path))
    ours, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  muon = root_optax.root(1e-2, ns_coeffs="muon")
  theirs, _ = jax.jit(muon.update)(grads, muon.init(params), params)
  for k in params:
    assert float(jnp.max(jnp.abs(ours[k] - theirs[k]))) > 1e-4, k
  assert len(list(tmp_path.glob("*.json"))) == 2  # 96x200 and 200x96 share an entry


def test_paper_table_warns_once_naming_every_missing_shape_at_the_callers_line():
  params = {"a": jnp.ones((96, 200)), "b": jnp.ones((33, 1000)), "c": jnp.ones((96, 200))}
  tx = root_optax.root(1e-2, variant="paper")
  state = tx.init(params)
  with pytest.warns(UserWarning) as record:
    tx.update(params, state, params)
  tx.update(params, state, params)
  shape_warnings = [w for w in record if "no entry" in str(w.message)]
  assert len(shape_warnings) == 1
  assert "96x200" in str(shape_warnings[0].message) and "33x1000" in str(shape_warnings[0].message)
  assert shape_warnings[0].filename == __file__


def test_fast_threshold_gives_the_same_step_as_exact():
  params = jax.tree.map(jnp.asarray, _params(1))
  grads = jax.tree.map(jnp.asarray, _params(2))
  outs = []
  for method in ("exact", "fast"):
    tx = root_optax.root(0.01, variant="paper", ns_coeffs=TABLE, threshold_method=method)
    outs.append(tx.update(grads, tx.init(params), params)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *outs)


def test_zero_gradient_gives_zero_update_and_no_nan():
  params = jax.tree.map(jnp.asarray, _params(3))
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = root_optax.root(0.1, ns_coeffs=TABLE, weight_decay=0.0)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, 0.0)


def test_bf16_params_stay_bf16_and_finite():
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _params(4))
  grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), _params(5))
  tx = root_optax.root(0.01, ns_coeffs=TABLE)
  state = tx.init(params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  for p in jax.tree.leaves(params):
    assert p.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(p)))


def test_mu_dtype_sets_the_momentum_buffer_dtype():
  params = jax.tree.map(jnp.asarray, _params(6))
  state = root_optax.root(0.01, mu_dtype=jnp.bfloat16, ns_coeffs=TABLE).init(params)
  buffers = jax.tree.leaves(root_optax.momentum_buffer(state))
  assert buffers and all(b.dtype == jnp.bfloat16 for b in buffers)


def test_param_labels_send_leaves_to_adamw():
  params = jax.tree.map(jnp.asarray, _params(7))
  grads = jax.tree.map(jnp.asarray, _params(8))
  labels = {k: ("adam" if k == "w_sq" else ("root" if v.ndim == 2 else "adam")) for k, v in params.items()}
  tx = root_optax.root(0.01, ns_coeffs=TABLE, param_labels=labels)
  updates, _ = tx.update(grads, tx.init(params), params)
  adamw = optax.adamw(0.01, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
  expected, _ = adamw.update({"w_sq": grads["w_sq"]}, adamw.init({"w_sq": params["w_sq"]}), {"w_sq": params["w_sq"]})
  np.testing.assert_allclose(updates["w_sq"], expected["w_sq"], rtol=1e-6)


@pytest.mark.parametrize("as_callable", [False, True])
def test_weight_decay_mask(as_callable):
  params = jax.tree.map(jnp.asarray, _params(9))
  zeros = jax.tree.map(jnp.zeros_like, params)
  mask = {k: k != "w_wide" and k != "bias" for k in params}
  tx = root_optax.root(0.5, ns_coeffs=TABLE, weight_decay=0.1,
                       weight_decay_mask=(lambda p: jax.tree.map(lambda _: True, p)) if as_callable else mask)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for k, p in params.items():
    decayed = as_callable or mask[k]
    np.testing.assert_allclose(updates[k], -0.5 * 0.1 * p if decayed else 0.0, rtol=1e-6, atol=1e-7, err_msg=k)


def test_stacked_leaf_via_dimension_numbers():
  rng = np.random.default_rng(10)
  params = {"stack": jnp.asarray(rng.normal(size=(3, 6, 10)), jnp.float32), "b": jnp.zeros(10)}
  grads = {"stack": jnp.asarray(rng.normal(size=(3, 6, 10)), jnp.float32), "b": jnp.ones(10)}
  dims = {"stack": root_optax.DimensionNumbers(1, 2), "b": None}
  tx = root_optax.root(0.01, variant="paper", ns_coeffs=TABLE, muon_weight_dimension_numbers=dims,
                       weight_decay=0.0, threshold_method="exact")
  updates, _ = tx.update(grads, tx.init(params), params)
  for k in range(3):
    g = np.asarray(grads["stack"][k], np.float64)
    new, _ = _reference.root_matrix_step(np.zeros((6, 10)), g, np.zeros((6, 10)), 0.01, _coeffs_for((6, 10)), wd=0.0)
    np.testing.assert_allclose(updates["stack"][k], new, rtol=1e-5, atol=1e-6)


def test_non_matrix_root_leaf_without_dimension_numbers_is_an_error():
  params = {"stack": jnp.ones((2, 4, 4))}
  tx = root_optax.root(0.01, param_labels={"stack": "root"})
  with pytest.raises(ValueError, match="weight_dimension_numbers"):
    tx.update(params, tx.init(params), params)


def test_learning_rate_schedule():
  params = {"w": jnp.ones((4, 4))}
  schedule = optax.linear_schedule(1.0, 0.0, 4)
  tx = root_optax.root(schedule, ns_coeffs=TABLE, weight_decay=0.0)
  state = tx.init(params)
  grads = {"w": jnp.asarray(np.random.default_rng(11).normal(size=(4, 4)), jnp.float32)}
  norms = []
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    norms.append(float(jnp.linalg.norm(updates["w"])))
  np.testing.assert_allclose(np.array(norms) / norms[0], [1.0, 0.75, 0.5], rtol=1e-2)


@pytest.mark.parametrize("kwargs, name", [
    ({"beta": 1.0}, "beta"), ({"quantile": 0.0}, "quantile"), ({"weight_decay": -0.1}, "weight_decay"),
    ({"adam_b2": 1.0}, "adam_b2"), ({"preconditioning": "l2"}, "preconditioning"), ({"ns_steps": 0}, "ns_steps"),
    ({"threshold_method": "sort"}, "threshold_method"), ({"adam_eps": 0.0}, "adam_eps"),
    ({"threshold_rank_tolerance": -0.1}, "threshold_rank_tolerance"),
    ({"ns_coeffs": {"4x4": (1.0, 2.0)}}, "shape"), ({"consistent_rms": -1.0}, "consistent_rms"),
])
def test_invalid_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.root(0.01, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"outlier_gate": 0.0}, "outlier_gate"), ({"burst_factor": 1.0}, "burst_factor"),
    ({"burst_decay": 1.0}, "burst_decay"), ({"beta": -0.5}, "beta"), ({"mu_dtype": "int32"}, "mu_dtype"),
    ({"consistent_rms": 0.0}, "consistent_rms"), ({"threshold_method": "sort", "quantile": 0.9}, "threshold_method"),
    ({"variant": "paper", "threshold_rank_tolerance": 1.0}, "threshold_rank_tolerance"),
])
def test_errors_of_inner_transforms_name_roots_arguments(kwargs, name):
  """Each stage is checked where it is built, under root()'s name for the argument."""
  inner = {"outlier_gate": "threshold", "burst_factor": "factor", "burst_decay": "decay", "beta": "decay",
           "mu_dtype": "accumulator_dtype", "consistent_rms": "rms", "threshold_method": "method",
           "threshold_rank_tolerance": "rank_tolerance"}[name]
  with pytest.raises((ValueError, TypeError)) as error:
    root_optax.root(0.01, **kwargs)
  assert str(error.value).startswith(name + " "), str(error.value)
  assert not str(error.value).startswith(inner + " ")


def test_unsafe_coefficient_warning_points_at_the_callers_line():
  unsafe = {"4x4": (3.4916, -4.8224, 2.1095)}  # the reference script's: overshoots to 3.31
  with pytest.warns(UserWarning, match="amplify") as record:
    root_optax.root(0.01, ns_coeffs=unsafe)
  assert {w.filename for w in record if "amplify" in str(w.message)} == {__file__}


def test_trains_a_least_squares_problem():
  rng = np.random.default_rng(12)
  a = jnp.asarray(rng.normal(size=(32, 16)), jnp.float32)
  target = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  y = a @ target
  loss = lambda p: jnp.mean((a @ p["w"] + p["b"] - y) ** 2)
  params = {"w": jnp.zeros((16, 8)), "b": jnp.zeros(8)}
  tx = root_optax.root(0.05, weight_decay=0.0)
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  initial = float(loss(params))
  for _ in range(200):
    params, state = step(params, state)
  assert float(loss(params)) < 0.02 * initial


@pytest.mark.parametrize("kwargs, name", [
    ({"outlier_gate": 0.0}, "outlier_gate"), ({"burst_factor": 1.0}, "burst_factor"),
    ({"burst_decay": 1.0}, "burst_decay"), ({"variant": "exact"}, "variant"),
    ({"quantile": 1.5}, "quantile"),
])
def test_root_validates_the_robust_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.root(1e-2, **kwargs)


def test_robust_stages_switch_off_with_inf_and_quantile_one():
  params = {"w": jnp.ones((8, 16))}
  grads = {"w": jnp.asarray(np.random.default_rng(5).standard_normal((8, 16)), jnp.float32)}
  off = root_optax.root(1e-2, outlier_gate=math.inf, burst_factor=math.inf, ns_coeffs="muon")
  state = off.init(params)
  assert not root_optax.diagnostics(state)
  muon_like = optax.contrib.muon(1e-2, beta=0.95, nesterov=True, weight_decay=0.1,
                                 consistent_rms=0.2, ns_coeffs=(3.4445, -4.7750, 2.0315))
  ours, _ = off.update(grads, state, params)
  theirs, _ = muon_like.update(grads, muon_like.init(params), params)
  del theirs  # optax's momentum is an EMA; compare our own NumPy step instead
  expected, _ = _reference.root_matrix_step(np.ones((8, 16)), np.asarray(grads["w"], np.float64),
                                            np.zeros((8, 16)), 1e-2, [_reference.MUON] * 5, p=1.0)
  np.testing.assert_allclose(1.0 + np.asarray(ours["w"]), expected, rtol=1e-5, atol=1e-6)


def test_robust_root_under_apply_if_finite_skips_a_nan_step_with_state_unchanged():
  params = {"w": jnp.ones((8, 16))}
  tx = optax.apply_if_finite(root_optax.root(1e-2), 3)
  state = tx.init(params)
  good = {"w": jnp.asarray(np.random.default_rng(6).standard_normal((8, 16)), jnp.float32)}
  _, state = tx.update(good, state, params)
  bad = {"w": good["w"].at[0, 0].set(jnp.inf)}
  updates, after = tx.update(bad, state, params)
  np.testing.assert_array_equal(updates["w"], 0.0)
  assert jax.tree.structure(after.inner_state) == jax.tree.structure(state.inner_state)
  jax.tree.map(np.testing.assert_array_equal, after.inner_state, state.inner_state)


def test_robust_root_bf16_and_huge_values_stay_finite():
  params = {"w": jnp.ones((8, 16), jnp.bfloat16)}
  tx = root_optax.root(1e-2)
  state = tx.init(params)
  for scale in (1.0, 1e30, 1e-30, 0.0):
    g = {"w": jnp.asarray(scale * np.random.default_rng(7).standard_normal((8, 16)), jnp.bfloat16)}
    updates, state = jax.jit(tx.update)(g, state, params)
    assert updates["w"].dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(updates["w"])))
