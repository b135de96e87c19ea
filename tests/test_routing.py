"""`describe` / `routes` say where `root()` sends each leaf, and `root()` logs it once."""

import doctest
import importlib
import logging

import jax
import jax.numpy as jnp
import optax
import pytest

import root_optax

PARAMS = {"embed": jnp.zeros((256, 64)), "w": jnp.zeros((64, 128)), "v": jnp.zeros((128, 64)),
          "b": jnp.zeros(128), "conv": jnp.zeros((3, 3, 4, 8)), "stack": jnp.zeros((4, 64, 128))}




def test_default_routes_match_what_root_does():
  found = {r.path: r for r in root_optax.routes(PARAMS)}
  assert {p for p, r in found.items() if r.label == "root"} == {"embed", "w", "v"}
  assert found["w"].group == (64, 128) and found["v"].group == (64, 128)
  assert found["embed"].group == (64, 256)
  assert "muon_weight_dimension_numbers" in found["conv"].reason
  assert found["b"].reason == "rank 1" and found["b"].group is None
  # root() with the same arguments: ROOT leaves get a momentum, AdamW leaves a mu.
  state = root_optax.root(1e-2, ns_coeffs="muon").init(PARAMS)
  adam_mu = state.inner_states["adam"].inner_state[0].mu
  on_adam = {k for k, v in adam_mu.items() if not isinstance(v, optax.MaskedNode)}
  assert on_adam == {p for p, r in found.items() if r.label == "adam"}


def test_labels_and_dimension_numbers_are_followed():
  dims = {"embed": None, "w": root_optax.DimensionNumbers(), "v": None, "b": None,
          "conv": root_optax.DimensionNumbers((0, 1, 2), 3), "stack": root_optax.DimensionNumbers(1, 2)}
  found = {r.path: r for r in root_optax.routes(PARAMS, muon_weight_dimension_numbers=dims)}
  assert found["conv"].group == (8, 36) and found["conv"].matrices == 1
  assert found["stack"].group == (64, 128) and found["stack"].matrices == 4
  assert found["v"].label == "adam"
  labelled = root_optax.routes(PARAMS, param_labels=root_optax.route_by_path(("embed",)))
  assert {r.path for r in labelled if r.label == "root"} == {"w", "v"}
  assert all(r.reason == "param_labels" for r in labelled)


def test_routes_reject_bad_labels_and_dimension_numbers():
  with pytest.raises(ValueError, match="param_labels"):
    root_optax.routes(PARAMS, param_labels=jax.tree.map(lambda _: "muon", PARAMS))
  with pytest.raises(TypeError, match="muon_weight_dimension_numbers"):
    root_optax.routes(PARAMS, muon_weight_dimension_numbers={"w": 3})


def test_describe_names_every_leaf_and_the_groups():
  text = root_optax.describe(PARAMS)
  first, *rows = text.splitlines()
  assert first.startswith("3 leaves to ROOT (2 shape groups: 2 x 64x128, 1 x 64x256), 3 to AdamW")
  assert "rank > 2 on AdamW: conv, stack" in first
  assert len(rows) == 1 + len(PARAMS)
  assert root_optax.describe(jax.eval_shape(lambda: PARAMS)) == text  # shapes are enough


def test_root_logs_the_routing_once_at_init(caplog):
  tx = root_optax.root(1e-2, ns_coeffs="muon")
  with caplog.at_level(logging.INFO, logger="root_optax"):
    tx.init(PARAMS)
    tx.init(PARAMS)
    jax.eval_shape(tx.init, PARAMS)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("root():")]
  assert lines == ["root(): " + root_optax.describe(PARAMS).splitlines()[0]]


@pytest.mark.parametrize("module", ["alias", "diagnostics", "routing"])
def test_docstring_examples_run(module):
  result = doctest.testmod(importlib.import_module(f"root_optax.{module}"), optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0
