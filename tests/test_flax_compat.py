"""root() with flax: nnx.Optimizer, linen TrainState, flax.serialization.

`root()` is an `optax.partition`, so its state holds `optax.MaskedNode` for
the leaves of the other branch; flax issue 4901 (nnx.Optimizer failing on
optax's Muon) and 5372 (optimizer.update failing with optax.partition) came
from exactly that. Each test compares against the plain optax loop on the
same arrays.
"""

import json
import os
import pathlib
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import _reference
import root_optax

MUON = (3.4445, -4.7750, 2.0315)
LR = 0.02
_HERE = pathlib.Path(__file__).resolve().parent
_MESH_WORKER_TIMEOUT_S = 600
# variant-mesh cases `_flax_mesh_worker.py` runs: the (2, 1) mesh, 1-D and 2-D meshes.
MESH_CASES = tuple(f"{v}-{m}" for v in ("robust", "paper") for m in ("2x1", "8", "2x4"))


def _tx():
  return root_optax.root(LR, variant="paper", ns_coeffs=MUON, threshold_method="exact")


class _Net(nnx.Module):
  """Two matrices (ROOT), two biases and a LayerNorm (AdamW)."""

  def __init__(self, rngs):
    self.dense1 = nnx.Linear(8, 16, rngs=rngs)
    self.norm = nnx.LayerNorm(16, rngs=rngs)
    self.dense2 = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    return self.dense2(jax.nn.relu(self.norm(self.dense1(x))))


def _mlp(dense1, norm, dense2, x, eps=1e-6):
  """The forward pass of both nets, written out: the expectation's model."""
  h = x @ dense1["kernel"] + dense1["bias"]
  mean = jnp.mean(h, -1, keepdims=True)
  var = jnp.mean((h - mean) ** 2, -1, keepdims=True)
  h = (h - mean) / jnp.sqrt(var + eps) * norm["scale"] + norm["bias"]
  return jax.nn.relu(h) @ dense2["kernel"] + dense2["bias"]


def _data():
  rng = np.random.default_rng(0)
  return jnp.asarray(rng.normal(size=(32, 8)), jnp.float32), jnp.asarray(rng.normal(size=(32, 4)), jnp.float32)


_TX = _tx()


@jax.jit
def _functional_step(params, state, x, y):
  """The plain optax step on `_mlp`'s params: the expectation for the wrappers."""
  grads = jax.grad(lambda p: jnp.mean((_mlp(p["dense1"], p["norm"], p["dense2"], x) - y) ** 2))(params)
  updates, state = _TX.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _functional_run(params, steps):
  x, y = _data()
  state = _TX.init(params)
  for _ in range(steps):
    params, state = _functional_step(params, state, x, y)
  return params


def test_nnx_optimizer_matches_numpy_then_the_optax_loop():
  model = _Net(nnx.Rngs(0))
  initial = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
  x, y = _data()

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
    optimizer.update(model, grads)
    return grads

  # Step 1 against the NumPy restatement: a ROOT kernel and an AdamW scale.
  g = nnx.to_pure_dict(step(model, optimizer))
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  w0 = np.asarray(initial["dense1"]["kernel"], np.float64)
  want, _ = _reference.root_matrix_step(w0, np.asarray(g["dense1"]["kernel"], np.float64), np.zeros_like(w0),
                                        LR, [MUON] * 5)
  np.testing.assert_allclose(after["dense1"]["kernel"], want, rtol=1e-5, atol=1e-6)
  s0 = np.asarray(initial["norm"]["scale"], np.float64)
  want_s, *_ = _reference.adamw_step(s0, np.asarray(g["norm"]["scale"], np.float64), 0.0, 0.0, 1, LR)
  np.testing.assert_allclose(after["norm"]["scale"], want_s, rtol=1e-5, atol=1e-7)
  # Steps 2-3 against the plain optax loop.
  for _ in range(2):
    step(model, optimizer)
  expected = _functional_run(initial, 3)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)
  assert int(optimizer.step[...]) == 3
  # Both branches were used: the state holds MaskedNode in each of them.
  is_masked = lambda n: isinstance(n, optax.MaskedNode)
  assert any(is_masked(n) for n in jax.tree.leaves(optimizer.opt_state, is_leaf=is_masked))


def test_nnx_optimizer_with_only_a_vector_param():
  # The flax 4901 reproduction: a model whose one Param is 1-D (AdamW branch),
  # so the ROOT branch's state is all MaskedNode.
  class Scalar(nnx.Module):
    def __init__(self):
      self.a = nnx.Param(jnp.array([1.0]))

  model = Scalar()
  optimizer = nnx.Optimizer(model, _tx(), wrt=nnx.Param)
  optimizer.update(model, nnx.grad(lambda m: jnp.sum(m.a[...] ** 2))(model))
  want, *_ = _reference.adamw_step(np.array([1.0]), np.array([2.0]), 0.0, 0.0, 1, LR)
  np.testing.assert_allclose(model.a[...], want, rtol=1e-6)


class _LinenNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.LayerNorm()(nn.Dense(16)(x)))
    return nn.Dense(4)(x)


def test_linen_train_state_matches_the_optax_loop():
  x, y = _data()
  net = _LinenNet()
  params = net.init(jax.random.key(0), x)["params"]
  state = train_state.TrainState.create(apply_fn=net.apply, params=params, tx=_tx())

  @jax.jit
  def step(state):
    grads = jax.grad(lambda p: jnp.mean((state.apply_fn({"params": p}, x) - y) ** 2))(state.params)
    return state.apply_gradients(grads=grads)

  for _ in range(3):
    state = step(state)
  # The same net as _Net: rename its params and reuse the compiled expectation.
  names = {"dense1": "Dense_0", "norm": "LayerNorm_0", "dense2": "Dense_1"}
  as_nnx = lambda p: {k: dict(p[v]) for k, v in names.items()}
  np.testing.assert_allclose(_mlp(*as_nnx(params).values(), x), net.apply({"params": params}, x),
                             rtol=1e-5, atol=1e-6)
  expected = _functional_run(as_nnx(params), 3)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), as_nnx(state.params), expected)
  assert int(state.step) == 3


@pytest.mark.parametrize("with_inject", [False, True])
def test_flax_serialization_round_trip_gives_the_same_next_update(with_inject):
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.normal(size=(6, 10)), jnp.float32), "b": jnp.zeros(10)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params) for _ in range(2)]
  tx = (optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(learning_rate=LR, ns_coeffs=MUON)
        if with_inject else _tx())
  update = jax.jit(tx.update)
  _, state = update(grads[0], tx.init(params), params)
  blob = flax.serialization.to_bytes(state)
  restored = flax.serialization.from_bytes(tx.init(params), blob)
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  a, _ = update(grads[1], state, params)
  b, _ = update(grads[1], restored, params)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  # Restoring into a fresh state really changed it (the target was not reused).
  fresh_update, _ = update(grads[1], tx.init(params), params)
  assert not np.array_equal(a["w"], fresh_update["w"])


@pytest.fixture(scope="module")
def mesh_report():
  """The JSON report of `_flax_mesh_worker.py`, run on 8 CPU host devices."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_HERE.parent), env.get("PYTHONPATH")]))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, str(_HERE / "_flax_mesh_worker.py")], cwd=_HERE.parent,
                        env=env, capture_output=True, text=True,
                        timeout=_MESH_WORKER_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", MESH_CASES)
def test_sharded_nnx_model_trains_like_one_device(mesh_report, case):
  # A MiniGPT-tutorial-style model (kernels, embeddings and norm scales with
  # out_sharding metadata) under nnx.Optimizer: the per-matrix statistics must
  # not take their parameter's sharding (a 2-D spec on a 0-D array failed to
  # build), momentum keeps it, and 12 steps match one device's losses.
  assert case in mesh_report, f"worker did not run {case!r}"
  assert mesh_report[case]["ok"], mesh_report[case]["detail"]


def test_per_matrix_statistics_carry_no_variable_metadata():
  model = _Net(nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  is_var = lambda x: isinstance(x, nnx.Variable)
  # In root()'s state, every boxed leaf is a buffer of its parameter's shape.
  for variant in ("robust", "paper"):
    state = root_optax.root(LR, variant=variant).init(params)
    boxed = [x.get_value() for x in jax.tree.leaves(state, is_leaf=is_var) if is_var(x)]
    boxed = [x for x in boxed if not isinstance(x, optax.MaskedNode)]
    shapes = {x.shape for x in jax.tree.leaves(nnx.as_pure(params))}
    assert boxed and all(x.shape in shapes for x in boxed), [x.shape for x in boxed]
  # A per-matrix state: the params' keys, plain arrays, one (batch,) figure per matrix.
  stats = root_optax.clip_bursts().init(params).stats["bursts"]
  assert not any(is_var(x) for x in jax.tree.leaves(stats, is_leaf=is_var))
  assert sorted(stats.norm_ema) == ["dense1", "dense2", "norm"]
  np.testing.assert_array_equal(stats.norm_ema["dense1"]["kernel"], [0.0])
  assert isinstance(stats.norm_ema["norm"]["scale"], optax.MaskedNode)
  # The momentum keeps the parameter's box (and so its sharding in nnx.Optimizer).
  trace = root_optax.momentum_buffer(root_optax.root(LR).init(params))
  assert is_var(trace["dense1"]["kernel"])


def test_linen_partitioned_params_give_unboxed_statistics():
  params = {"w": nn.Partitioned(jnp.ones((4, 8)), names=("a", "b")),
            "b": nn.Partitioned(jnp.ones(8), names=("b",))}
  state = root_optax.clip_bursts().init(params)
  norm_ema = state.stats["bursts"].norm_ema
  assert not isinstance(norm_ema["w"], nn.Partitioned)
  np.testing.assert_array_equal(norm_ema["w"], [0.0])
  # The boxes' partition specs apply to the params only.
  specs = nn.get_partition_spec(state)
  assert specs.stats["bursts"].norm_ema["w"] == jax.sharding.PartitionSpec()
