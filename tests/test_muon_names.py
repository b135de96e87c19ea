"""`root()` speaks `optax.contrib.muon`'s argument names, and means the same by them."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax

MUON_TRIPLE = (3.4445, -4.7750, 2.0315)


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.normal(size=(12, 20)), jnp.float32),
          "v": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
          "b": jnp.asarray(rng.normal(size=(20,)), jnp.float32)}


def test_every_muon_argument_is_a_root_argument():
  muon_args = inspect.signature(optax.contrib.muon).parameters
  root_args = inspect.signature(root_optax.root).parameters
  missing = [name for name in muon_args if name not in root_args]
  assert not missing, f"root() lacks optax.contrib.muon's {missing}"
  # The positional ones in the same order, so positional calls mean the same too.
  positional = lambda params: [n for n, p in params.items()
                               if p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD]
  assert positional(root_args) == positional(muon_args)


def test_a_muon_call_with_all_its_defaults_runs_under_root():
  defaults = {name: p.default for name, p in inspect.signature(optax.contrib.muon).parameters.items()
              if p.default is not inspect.Parameter.empty}
  tx = root_optax.root(1e-2, **defaults)
  params = _tree()
  updates, _ = jax.jit(tx.update)(_tree(1), tx.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("preconditioning,adaptive", [
    ("frobenius", False), ("schatten", False), ("aol", False), ("spectral", False),
    ("frobenius", True)])
def test_first_step_equals_optax_muon(preconditioning, adaptive):
  # With ROOT's own stages off, the first step is Muon's: both momenta are
  # proportional to G on step 1 and Newton-Schulz is scale-invariant.
  kw = dict(ns_coeffs=MUON_TRIPLE, eps=1e-8, weight_decay=0.0, adam_b2=0.999,
            preconditioning=preconditioning, adaptive=adaptive, consistent_rms=None)
  params, grads = _tree(), _tree(1)
  muon = optax.contrib.muon(0.1, **kw)
  ours = root_optax.root(0.1, variant="paper", quantile=1.0, adam_nesterov=True, **kw)
  want, _ = muon.update(grads, muon.init(params), params)
  got, _ = ours.update(grads, ours.init(params), params)
  if adaptive:
    # <M, U> U scales with M: on step 1 ROOT's Nesterov look-ahead, as an
    # average, is G; Muon's bias-corrected one is (1 + beta / (1 + beta)) G.
    beta = 0.95
    ratio = 1 / (1 + beta / (1 + beta))
    want = dict(want, w=want["w"] * ratio, v=want["v"] * ratio)
  chex.assert_trees_all_close(got, want, rtol=2e-4, atol=1e-6)


def _muon_and_root(nesterov, adaptive=False, lr=1e-2):
  """optax's Muon and root() configured as its step (ROOT's own stages off)."""
  kw = dict(ns_coeffs="standard", eps=1e-8, weight_decay=0.0, nesterov=nesterov,
            adaptive=adaptive, consistent_rms=None, preconditioning="frobenius")
  muon = optax.contrib.muon(lr, **kw)
  ours = root_optax.root(lr, variant="paper", quantile=1.0, adam_b2=0.999, adam_eps=1e-8,
                         adam_weight_decay=0.0, adam_nesterov=nesterov, **kw)
  return muon, ours


def _both_updates(steps, nesterov, adaptive=False):
  """Per step, (Muon's updates, root()'s) on the same random gradients."""
  muon, ours = _muon_and_root(nesterov, adaptive)
  params = _tree()
  muon_state, our_state = muon.init(params), ours.init(params)
  muon_update, our_update = jax.jit(muon.update), jax.jit(ours.update)
  out = []
  for step in range(steps):
    grads = _tree(100 + step)
    want, muon_state = muon_update(grads, muon_state, params)
    got, our_state = our_update(grads, our_state, params)
    out.append((want, got))
  return out


def test_twenty_steps_equal_optax_muon_without_nesterov():
  # Without Nesterov, Muon's bias-corrected EMA is (1 - beta) / (1 - beta^t)
  # times ROOT's sum: the same direction, which Newton-Schulz cannot tell apart.
  for step, (want, got) in enumerate(_both_updates(20, nesterov=False)):
    chex.assert_trees_all_close(got, want, rtol=2e-5, atol=1e-7, custom_message=f"step {step + 1}")


def test_with_nesterov_the_steps_differ_while_muons_bias_correction_fades():
  # Muon's Nesterov look-ahead weighs G and M by different bias corrections;
  # ROOT's sum form weighs them (1, beta): step 1 agrees, later steps do not.
  # docs/migration.md states this.
  pairs = _both_updates(3, nesterov=True)
  rel = [float(jnp.linalg.norm(got["w"] - want["w"]) / jnp.linalg.norm(want["w"]))
         for want, got in pairs]
  assert rel[0] < 1e-5 and rel[1] > 1e-2, rel


@pytest.mark.parametrize("nesterov", [False, True])
def test_adaptive_step_size_is_optax_muons(nesterov):
  # adaptive=True scales U by <B, U>, linear in the momentum: ROOT's sum is
  # ~1 / (1 - beta) = 20 times Muon's average unless rescaled (it was 1.3x,
  # 5x, 13x and 20x Muon's at steps 1, 5, 20 and 100).
  beta = 0.95
  ratios = np.array([float(jnp.linalg.norm(got["w"]) / jnp.linalg.norm(want["w"]))
                     for want, got in _both_updates(100, nesterov, adaptive=True)])
  if not nesterov:
    np.testing.assert_allclose(ratios, 1.0, rtol=1e-4)
  else:
    # Step 1: ROOT's look-ahead averages to G, Muon's is (1 + beta / (1 + beta)) G;
    # the G terms' weights then differ by beta^t.
    np.testing.assert_allclose(ratios[0], 1 / (1 + beta / (1 + beta)), rtol=1e-4)
    assert np.all(np.abs(ratios[19:] - 1) < 0.02), ratios[19:]
    np.testing.assert_allclose(ratios[-1], 1.0, atol=1e-3)


def test_consistent_rms_scales_like_optax():
  params, grads = _tree(), _tree(1)
  for rms in (None, 0.2, 0.5):
    kw = dict(ns_coeffs=MUON_TRIPLE, eps=1e-8, weight_decay=0.0, consistent_rms=rms)
    want, _ = optax.contrib.muon(0.1, **kw).update(grads, optax.contrib.muon(0.1, **kw).init(params), params)
    tx = root_optax.root(0.1, variant="paper", quantile=1.0, preconditioning="frobenius", **kw)
    got, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["v"], want["v"], rtol=2e-4, atol=1e-6)


def test_optax_presets_standard_and_dion():
  table = root_optax.load_coefficients("dion")
  coeffs, _ = table.lookup((12, 20))
  assert np.asarray(coeffs).shape == (5, 3)
  np.testing.assert_allclose(np.asarray(coeffs)[0], (4.0848, -6.8946, 2.9270))
  np.testing.assert_allclose(np.asarray(root_optax.load_coefficients("standard").lookup((3, 4))[0])[0],
                             MUON_TRIPLE)


def test_auto_fits_frobenius_coefficients_when_asked(tmp_path):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 24, 40)), jnp.float32)
  frob = root_optax.ada_newton_orthogonalize("auto", normalization="frobenius", cache_dir=str(tmp_path))
  s4 = root_optax.ada_newton_orthogonalize("auto", cache_dir=str(tmp_path))
  out_frob, _ = frob.update({"w": x[0]}, frob.init(None))
  out_s4, _ = s4.update({"w": x[0]}, s4.init(None))
  # Two fits, both close to the polar factor, but not the same polynomial.
  u, _, vt = np.linalg.svd(np.asarray(x[0], np.float64), full_matrices=False)
  for out in (out_frob, out_s4):
    assert np.linalg.norm(np.asarray(out["w"]) - u @ vt) / np.linalg.norm(u @ vt) < 0.3
  assert not np.allclose(out_frob["w"], out_s4["w"])
  assert len(list(tmp_path.iterdir())) == 2  # one cached fit per normalization


def test_weight_decay_reaches_every_parameter_unless_masked():
  # A zero gradient: only the weight decay moves a parameter.
  params = {"w": jnp.ones((4, 8)), "embed": jnp.ones((10, 4)), "b": jnp.ones(8)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = root_optax.root(0.1, weight_decay=0.5, ns_coeffs="muon",
                       param_labels=root_optax.route_by_path(("embed",)))
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  for key in params:
    np.testing.assert_allclose(updates[key], -0.05 * params[key], rtol=1e-6)
  # One argument spares the vectors, in both branches.
  spared = root_optax.root(0.1, weight_decay=0.5, ns_coeffs="muon",
                           weight_decay_mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p))
  updates, _ = jax.jit(spared.update)(zeros, spared.init(params), params)
  np.testing.assert_array_equal(updates["b"], 0.0)
  np.testing.assert_allclose(updates["embed"], -0.05 * params["embed"], rtol=1e-6)
