"""Tests for root_optax._src.labels: which leaves ROOT takes, `route_by_path`."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import root_optax
from root_optax._src import labels

LR = 0.01


def test_resolve_labels_rejects_unknown_labels():
  with pytest.raises(ValueError, match="param_labels"):
    labels.resolve_labels({"w": "sgd"}, {"w": jnp.ones((2, 2))})


def test_route_by_path_labels():
  params = {"embed": jnp.ones((10, 4)), "block": {"w": jnp.ones((4, 4)), "b": jnp.ones(4)},
            "lm_head": jnp.ones((4, 10))}
  labels = root_optax.route_by_path(("embed", "lm_head"))(params)
  assert labels == {"embed": "adam", "block": {"w": "root", "b": "adam"}, "lm_head": "adam"}


def test_an_unmatched_route_by_path_pattern_is_warned_once(caplog):
  router = root_optax.route_by_path(("embedding", "w", "lm_head", "head"))
  params = {"embed": jnp.zeros((8, 4)), "w": jnp.zeros((4, 4)), "head": jnp.zeros((4, 8))}
  with caplog.at_level(logging.WARNING, logger="root_optax"):
    router(params)
    router(params)
  warned = [r.getMessage() for r in caplog.records if "route_by_path" in r.getMessage()]
  # 'lm_head' is covered by 'head', which matched; 'embedding' is a typo of 'embed'.
  assert len(warned) == 1 and "'embedding'" in warned[0] and "lm_head" not in warned[0]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="root_optax"):
    root_optax.route_by_path()(params)  # the default patterns are alternatives: no warning
  assert not caplog.records


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


@pytest.mark.parametrize("warn_unmatched", [False, True])
def test_route_by_path_warn_unmatched_keyword(caplog, warn_unmatched):
  router = root_optax.route_by_path(("embed", "lm_head"), warn_unmatched=warn_unmatched)
  params = {"embed": jnp.zeros((8, 4)), "w": jnp.zeros((4, 4))}  # no 'lm_head'
  with caplog.at_level(logging.WARNING, logger="root_optax"):
    labels = router(params)
    router(params)
  warned = [r.getMessage() for r in caplog.records if "route_by_path" in r.getMessage()]
  assert len(warned) == (1 if warn_unmatched else 0)
  assert labels == {"embed": "adam", "w": "root"}  # the same labels either way
  with pytest.raises(TypeError, match="warn_unmatched"):
    root_optax.route_by_path(("embed",), warn_unmatched="no")
