"""Tests for root_optax._src.orthogonalize: grouping, per-shape dispatch, fallback, 'auto'."""

import logging
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from root_optax._src import newton_schulz as ns_lib


MUON = (3.4445, -4.7750, 2.0315)
TABLE = {"8x16": (3.0, -3.2, 1.2), "8x8": [(4.0, -6.0, 2.5), (3.0, -3.0, 1.0), (1.875, -1.25, 0.375)]}


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"a": (8, 16), "b": (16, 8), "c": (8, 16), "d": (8, 8), "e": (8, 8), "bias": (16,)}
  return {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}


def _expected(name, x):
  steps = 3
  if x.shape == (8, 8):
    coeffs = TABLE["8x8"]
  else:
    coeffs = [TABLE["8x16"]] * steps
  return _reference.newton_schulz(np.asarray(x, np.float64), coeffs)


def test_each_shape_uses_its_own_coefficients(maybe_jit):
  tree = _tree()
  tx = root_optax.ada_newton_orthogonalize(TABLE, ns_steps=3)
  out, _ = maybe_jit(tx.update)(tree, tx.init(tree))
  for name in "abcde":
    np.testing.assert_allclose(out[name], _expected(name, tree[name]), rtol=1e-4, atol=1e-5, err_msg=name)
  np.testing.assert_array_equal(out["bias"], tree["bias"])


def test_grouped_equals_per_leaf():
  tree = _tree(1)
  tx = root_optax.ada_newton_orthogonalize(TABLE, ns_steps=3)
  grouped, _ = tx.update(tree, tx.init(tree))
  for name, leaf in tree.items():
    single, _ = tx.update({name: leaf}, tx.init({name: leaf}))
    np.testing.assert_allclose(grouped[name], single[name], rtol=1e-6, atol=1e-7)


def test_stacked_leaf_with_dimension_numbers_equals_per_slice():
  stack = jnp.asarray(np.random.default_rng(2).normal(size=(3, 8, 16)), jnp.float32)
  dims = {"s": root_optax.DimensionNumbers(reduction_axis=1, output_axis=2)}
  tx = root_optax.ada_newton_orthogonalize(TABLE, ns_steps=3, weight_dimension_numbers=dims)
  out, _ = tx.update({"s": stack}, tx.init(None))
  for k in range(3):
    np.testing.assert_allclose(out["s"][k], _expected("a", stack[k]), rtol=1e-4, atol=1e-5)


def test_conv_kernel_dimension_numbers():
  # HWIO kernel: reduction over (H, W, I), output O, as optax's Muon would.
  kernel = jnp.asarray(np.random.default_rng(3).normal(size=(3, 3, 4, 8)), jnp.float32)
  dims = root_optax.DimensionNumbers(reduction_axis=(0, 1, 2), output_axis=3)
  tx = root_optax.ada_newton_orthogonalize("muon", weight_dimension_numbers=dims)
  out, _ = tx.update([kernel], tx.init(None))
  flat = np.asarray(kernel, np.float64).reshape(36, 8)
  expected = _reference.newton_schulz(flat, [_reference.MUON] * 5).reshape(3, 3, 4, 8)
  np.testing.assert_allclose(out[0], expected, rtol=1e-4, atol=1e-5)


def test_unknown_shapes_warn_once_per_transform_naming_them_all():
  tree = _tree()
  tx = root_optax.ada_newton_orthogonalize("paper")
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
      tx.update(tree, tx.init(tree))
    jax.jit(tx.update)(tree, tx.init(tree))
  messages = [str(w.message) for w in caught if "'paper' have no entry" in str(w.message)]
  assert len(messages) == 1  # 8x16 (both orientations) and 8x8, in one warning
  assert "8x16" in messages[0] and "8x8" in messages[0]


def test_auto_table_is_silent_and_differs_from_muon():
  tree = _tree()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tx = root_optax.ada_newton_orthogonalize()
    ours, _ = tx.update(tree, tx.init(tree))
  muon = root_optax.ada_newton_orthogonalize("muon")
  theirs, _ = muon.update(tree, muon.init(tree))
  assert max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs))) > 1e-3


def _gpt_small(layers=12, d=768, vocab=50304):
  block = {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d), "mlp_in": (d, 4 * d),
           "mlp_out": (4 * d, d), "ln1": (d,), "ln2": (d,)}
  tree = {f"layer_{i}": {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in block.items()}
          for i in range(layers)}
  tree["embed"] = jax.ShapeDtypeStruct((vocab, d), jnp.float32)
  tree["lm_head"] = jax.ShapeDtypeStruct((d, vocab), jnp.float32)
  return tree


def test_gpt_small_traces_one_newton_schulz_per_shape(monkeypatch):
  shapes_seen = []
  real = ns_lib.newton_schulz

  def counting(x, *args, **kwargs):
    shapes_seen.append(x.shape)
    return real(x, *args, **kwargs)

  monkeypatch.setattr(ns_lib, "newton_schulz", counting)
  params = _gpt_small()
  tx = root_optax.root(1e-3, param_labels=root_optax.route_by_path(("embed", "lm_head")))
  state = jax.eval_shape(tx.init, params)
  jaxpr = jax.make_jaxpr(tx.update)(params, state, params)
  # 768x768 (48 leaves) and 768x3072 (24 leaves, both orientations): two loops.
  assert sorted(shapes_seen) == [(24, 768, 3072), (48, 768, 768)]
  dots = lambda shape: str(jax.make_jaxpr(lambda x: real(x, [_reference.MUON] * 5))(
      jnp.ones(shape))).count("dot_general")
  # Square: standard form; 1x4 aspect: Gram form (method='auto'), as for 768x3072.
  assert str(jaxpr).count("dot_general") == dots((2, 4, 4)) + dots((2, 4, 16))


@pytest.mark.parametrize("kwargs, name", [
    ({"ns_steps": 0}, "ns_steps"), ({"normalization": "spectral"}, "normalization"),
    ({"eps": -1.0}, "eps"), ({"coefficients": "nope"}, "coefficients"),
    ({"coefficients": [(3, -4, 2)] * 6, "ns_steps": 5}, "ns_steps"),
])
def test_invalid_hyperparameters(kwargs, name):
  with pytest.raises(ValueError, match=name):
    root_optax.ada_newton_orthogonalize(**kwargs)


def test_table_normalization_is_used_by_default(monkeypatch):
  seen = []
  real = ns_lib.newton_schulz
  monkeypatch.setattr(ns_lib, "newton_schulz", lambda x, c, **kw: seen.append(kw["normalization"]) or real(x, c, **kw))
  tree = {"w": jnp.ones((4, 4))}
  table = {"default": (3.4445, -4.7750, 2.0315), "normalization": "schatten4"}
  tx = root_optax.ada_newton_orthogonalize(table)
  tx.update(tree, tx.init(tree))
  tx = root_optax.ada_newton_orthogonalize(table, normalization="aol")
  tx.update(tree, tx.init(tree))
  assert seen == ["schatten4", "aol"]


@pytest.mark.parametrize("spec, warns", [(MUON, False), ("muon", False), ({"4x4": MUON}, True)])
def test_only_shape_keyed_tables_warn_about_unknown_shapes(spec, warns):
  tree = {"w": jax.ShapeDtypeStruct((6, 10), jnp.float32)}
  tx = root_optax.ada_newton_orthogonalize(spec)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    jax.eval_shape(tx.update, tree, tx.init(tree))  # traces, compiles nothing
  assert any("no entry for shapes 6x10" in str(w.message) for w in caught) == warns


def test_auto_table_calibrates_under_eval_shape_and_jit_and_logs_one_line(tmp_path, caplog):
  params = {"a": jnp.ones((20, 44)), "b": jnp.ones((44, 20)), "c": jnp.ones((12, 300))}
  tx = root_optax.root(1e-2, ns_coeffs="auto", calibration_cache_dir=str(tmp_path))
  with caplog.at_level(logging.INFO, logger="root_optax"):
    state = jax.eval_shape(tx.init, params)
    out = jax.eval_shape(tx.update, params, state, params)
    jax.jit(tx.update)(params, tx.init(params), params)
  assert jax.tree.map(lambda x: x.shape, out[0]) == jax.tree.map(lambda x: x.shape, params)
  lines = [r.message for r in caplog.records if "calibrated" in r.message]
  assert len(lines) == 1 and "20x44" in lines[0] and "12x300" in lines[0]


def test_auto_table_recalibrates_entries_fitted_for_other_step_counts(tmp_path):
  params = {"w": jnp.ones((256, 768))}
  grads = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((256, 768)), jnp.float32)}
  tx = root_optax.ada_newton_orthogonalize("auto", ns_steps=3, cache_dir=str(tmp_path))
  out, _ = tx.update(grads, tx.init(params))
  assert len(list(tmp_path.glob("*.json"))) == 1  # the shipped 5-step entry was not used
  s = np.linalg.svd(np.asarray(out["w"], np.float64), compute_uv=False)
  assert np.all(np.abs(s - 1.0) < 0.3)
