"""`describe` / `routes` say where `root()` sends each leaf, and `root()` logs it once."""

import doctest
import importlib
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax

PARAMS = {"embed": jnp.zeros((256, 64)), "w": jnp.zeros((64, 128)), "v": jnp.zeros((128, 64)),
          "b": jnp.zeros(128), "conv": jnp.zeros((3, 3, 4, 8)), "stack": jnp.zeros((4, 64, 128))}


def test_default_routes_match_what_root_does():
  found = {r.path: r for r in root_optax.routes(PARAMS)}
  assert {p for p, r in found.items() if r.label == "root"} == {"w", "v"}
  assert found["w"].group == (64, 128) and found["v"].group == (64, 128)
  assert found["embed"].reason == "path has 'embed'" and found["embed"].group is None
  assert "muon_weight_dimension_numbers" in found["conv"].reason
  assert found["b"].reason == "rank 1" and found["b"].group is None
  # root() with the same arguments: ROOT leaves get a momentum, AdamW leaves a mu.
  state = root_optax.root(1e-2, ns_coeffs="muon").init(PARAMS)
  adam_mu = state.inner_states["adam"].inner_state[0].mu
  on_adam = {k for k, v in adam_mu.items() if not isinstance(v, optax.MaskedNode)}
  assert on_adam == {p for p, r in found.items() if r.label == "adam"}


# 2-D leaves that are not weight matrices: stacked biases and norm scales (nnx.scan
# makes them 2-D), vectors stored as (1, n) or (n, 1), an embedding table.
NOT_MATRICES = {"layers": {"bias": jnp.zeros((5, 10)), "norm": {"scale": jnp.zeros((5, 10))},
                           "kernel": jnp.zeros((10, 12))},
                "row": jnp.zeros((1, 32)), "col": jnp.zeros((32, 1)),
                "tok_embed": {"embedding": jnp.zeros((50, 10))}}


@pytest.mark.parametrize("labels", [None, "route_by_path"])
def test_vectors_stored_as_matrices_go_to_adamw(labels):
  param_labels = root_optax.route_by_path(("head",)) if labels else None
  found = {r.path: r for r in root_optax.routes(NOT_MATRICES, param_labels=param_labels)}
  assert {p for p, r in found.items() if r.label == "root"} == (
      {"layers/kernel", "tok_embed/embedding"} if labels else {"layers/kernel"})
  assert found["layers/bias"].reason == "2-D 'bias': a stacked bias"
  assert found["layers/norm/scale"].reason == "2-D 'scale': a stacked scale"
  assert found["row"].reason == "1x32: a vector" and found["col"].reason == "32x1: a vector"
  # root() follows: only the labelled-root leaves get a ROOT momentum.
  tx = root_optax.root(1e-2, ns_coeffs="muon", param_labels=param_labels)
  trace = root_optax.momentum_buffer(tx.init(NOT_MATRICES))
  leaves = jax.tree_util.tree_flatten_with_path(trace, is_leaf=lambda x: isinstance(x, optax.MaskedNode))[0]
  got = {"/".join(str(k.key) for k in path) for path, x in leaves if not isinstance(x, optax.MaskedNode)}
  assert got == {p for p, r in found.items() if r.label == "root"}


def test_describe_flags_what_may_not_be_meant():
  forced = jax.tree.map(lambda _: "root", NOT_MATRICES)
  first = root_optax.describe(NOT_MATRICES, param_labels=forced).splitlines()[0]
  assert "not weight matrices on ROOT: col, layers/bias, layers/norm/scale, row" in first
  found = {r.path: r for r in root_optax.routes(NOT_MATRICES, param_labels=forced)}
  assert found["row"].reason == "param_labels (default: adam, 1x32: a vector)"
  assert found["layers/kernel"].reason == "param_labels"


def test_describe_grammar_and_dtypes():
  assert root_optax.describe({}).splitlines()[0] == "0 leaves to ROOT, 0 to AdamW"
  one = {"w": jnp.zeros((4, 8)), "t": jnp.zeros((8, 8), jnp.int32)}
  text = root_optax.describe(one)
  assert text.splitlines()[0] == "1 leaf to ROOT (1 shape group: 1 x 4x8), 1 to AdamW"
  assert text.splitlines()[1].split() == ["leaf", "shape", "dtype", "goes", "to", "matrix", "group", "why"]
  assert "int32" in text and "dtype int32" in text


def test_nnx_state_paths_have_no_value_suffix():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  state = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Param)
  assert [r.path for r in root_optax.routes(state)] == ["bias", "kernel"]
  # The same labels from the boxed state (init) and its arrays (update).
  router = root_optax.route_by_path(("kernel",))
  assert jax.tree.leaves(router(state)) == jax.tree.leaves(router(nnx.as_pure(state))) == ["adam", "adam"]


def test_labels_and_dimension_numbers_are_followed():
  dims = {"embed": None, "w": root_optax.DimensionNumbers(), "v": None, "b": None,
          "conv": root_optax.DimensionNumbers((0, 1, 2), 3), "stack": root_optax.DimensionNumbers(1, 2)}
  found = {r.path: r for r in root_optax.routes(PARAMS, muon_weight_dimension_numbers=dims)}
  assert found["conv"].group == (8, 36) and found["conv"].matrices == 1
  assert found["stack"].group == (64, 128) and found["stack"].matrices == 4
  assert found["v"].label == "adam"
  labelled = {r.path: r for r in root_optax.routes(PARAMS, param_labels=root_optax.route_by_path(("embed",)))}
  assert {p for p, r in labelled.items() if r.label == "root"} == {"w", "v"}
  assert labelled["embed"].reason == "path has 'embed'" and labelled["w"].reason == "2-D"
  prefix = {r.path: r for r in root_optax.routes(
      PARAMS, param_labels={"embed": "adam", "w": "root", "v": "root", "b": "adam", "conv": "adam",
                            "stack": "adam"})}
  assert prefix["w"].label == "root" and prefix["embed"].reason == "param_labels"


def test_routes_reject_bad_labels_and_dimension_numbers():
  with pytest.raises(ValueError, match="param_labels"):
    root_optax.routes(PARAMS, param_labels=jax.tree.map(lambda _: "muon", PARAMS))
  with pytest.raises(TypeError, match="muon_weight_dimension_numbers"):
    root_optax.routes(PARAMS, muon_weight_dimension_numbers={"w": 3})


def test_describe_names_every_leaf_and_the_groups():
  text = root_optax.describe(PARAMS)
  first, *rows = text.splitlines()
  assert first.startswith("2 leaves to ROOT (1 shape group: 2 x 64x128), 4 to AdamW")
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
  result = doctest.testmod(importlib.import_module(f"root_optax._src.{module}"), optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0 and result.failed == 0


def test_integer_and_complex_matrices_go_to_adamw_with_one_info_line(caplog):
  params = {"w": jnp.ones((8, 16)), "table": jnp.ones((8, 8), jnp.int32),
            "c": jnp.ones((4, 6), jnp.complex64)}
  tx = root_optax.root(1e-2, ns_coeffs="muon")
  with caplog.at_level(logging.INFO, logger="root_optax"):
    state = tx.init(params)
    tx.init(params)
  moved = [r.getMessage() for r in caplog.records if "to AdamW: ROOT takes" in r.getMessage()]
  assert moved == ["root(): c (complex64), table (int32) to AdamW: ROOT takes real "
                   "floating-point matrices only"]
  found = {r.path: r for r in root_optax.routes(params)}
  assert found["table"].reason == "dtype int32" and found["c"].dtype == "complex64"
  # They get AdamW's moments, and the step is AdamW's (optax.adamw on the same leaves).
  grads = {"w": jnp.ones((8, 16)), "table": jnp.full((8, 8), 2, jnp.int32),
           "c": jnp.full((4, 6), 1 + 2j, jnp.complex64)}
  updates, _ = jax.jit(tx.update)(grads, state, params)
  adam = optax.adamw(1e-2, b1=0.9, b2=0.95, weight_decay=0.1)
  sub = {k: params[k] for k in ("table", "c")}
  want, _ = adam.update({k: grads[k] for k in sub}, adam.init(sub), sub)
  for k in sub:
    np.testing.assert_allclose(updates[k], want[k], rtol=1e-6, err_msg=k)
