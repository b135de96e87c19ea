"""root() inside optax's wrappers, and the checks of optax's contrib harness.

The harness is `optax/contrib/_common_test.py` of the installed optax: extra
update arguments, no recompilation on the second call, convergence on the
parabola / Rosenbrock / 2-D / mixed 1-D+2-D targets, `inject_hyperparams`,
`MultiSteps`, schedules and dtype preservation. Expected values come from
plain optax (for AdamW and SGD leaves) or from `_reference.py` (ROOT leaves).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _reference
import root_optax

MUON = (3.4445, -4.7750, 2.0315)
LR = 0.02


def _tree(seed, scale=1.0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  shapes = {"w": (4, 6), "v": (6, 4), "b": (6,)}
  return {k: jnp.asarray(rng.normal(size=s) * scale, dtype) for k, s in shapes.items()}


def _root(learning_rate=LR, **kw):
  return root_optax.root(learning_rate, variant="paper", ns_coeffs=MUON, threshold_method="exact",
                         **kw)


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


# -- The contrib harness ---------------------------------------------------- #

def test_extra_update_args_and_no_recompile_on_second_call():
  tx = _root()
  params = _tree(0)

  @jax.jit
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params, unexpected_extra_arg=1)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params, state = step(params, state, _tree(1))
  params, state = step(params, state, _tree(2))
  assert step._cache_size() == 1  # pylint: disable=protected-access


def _targets():
  """Parabola, Rosenbrock (AdamW leaves), 2x2 parabola and mixed 1-D + 2-D."""
  init = {"parabola": jnp.array([-1.0, 10.0, 1.0]), "rosenbrock": jnp.zeros(2),
          "matrix": jnp.zeros((2, 2)), "mixed": (jnp.zeros(3), jnp.zeros((2, 2)))}
  final = {"parabola": jnp.array([1.0, -1.0, 1.0]), "rosenbrock": jnp.ones(2),
           "matrix": jnp.array([[3.0, -2.0], [1.0, 4.0]]),
           "mixed": (jnp.array([1.0, -1.0, 2.0]), jnp.array([[1.0, 0.0], [-1.0, 1.0]]))}

  def objective(p):
    # Separable: each target's gradient depends on its own leaves only.
    x, y = p["rosenbrock"]
    squares = [jnp.sum((p[k] - final[k]) ** 2) for k in ("parabola", "matrix")]
    squares += [jnp.sum((a - b) ** 2) for a, b in zip(p["mixed"], final["mixed"])]
    return sum(squares) + (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2

  return init, final, objective


def test_converges_on_the_harness_targets():
  init, final, objective = _targets()
  steps = 4000
  tx = root_optax.root(optax.cosine_decay_schedule(0.1, steps),
                       adam_learning_rate=optax.cosine_decay_schedule(0.05, steps), weight_decay=0.0)
  state = optax.tree.map_params(tx, lambda v: v, tx.init(init))  # a no-op, as in the harness

  def step(carry, _):
    params, state = carry
    updates, state = tx.update(jax.grad(objective)(params), state, params)
    return (optax.apply_updates(params, updates), state), None

  (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, length=steps))((init, state))
  labels = root_optax.default_labels(init)
  assert labels["matrix"] == "root" and labels["rosenbrock"] == "adam"
  jax.tree.map(lambda p, f: np.testing.assert_allclose(p, f, rtol=3e-2, atol=3e-2), params, final)
  assert float(objective(params)) < 1e-4 < float(objective(init))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_updates_keep_the_params_dtype(dtype):
  params = _tree(3, dtype=dtype)
  tx = _root()
  updates, state = jax.jit(tx.update)(_tree(4, dtype=dtype), tx.init(params), params)
  for k, u in updates.items():
    assert u.dtype == jnp.dtype(dtype), k
  # Momentum and AdamW buffers; the per-matrix outlier figures are float32 vectors.
  assert all(x.dtype == jnp.dtype(dtype) for x in jax.tree.leaves(state) if x.ndim > 1)


# -- inject_hyperparams ----------------------------------------------------- #

_HPARAMS = dict(learning_rate=LR, beta=0.9, quantile=0.8, weight_decay=0.05, consistent_rms=0.3, adam_b2=0.99)


def test_inject_hyperparams_gives_the_same_steps():
  params = _tree(5)
  plain = _root(**_HPARAMS)
  injected = optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(
      variant="paper", ns_coeffs=MUON, threshold_method="exact", **_HPARAMS)
  states = [plain.init(params), injected.init(params)]
  for t in range(3):
    grads = _tree(10 + t)
    out_plain, states[0] = jax.jit(plain.update)(grads, states[0], params)
    out_injected, states[1] = jax.jit(injected.update)(grads, states[1], params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), out_plain, out_injected)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), states[0], states[1].inner_state)


def test_inject_hyperparams_schedule_and_manual_change_between_steps():
  params = _tree(6)
  schedule = optax.linear_schedule(LR, 0.0, 4)
  injected = optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(
      learning_rate=schedule, variant="paper", ns_coeffs=MUON, threshold_method="exact")
  plain = _root(schedule)  # root() takes the schedule directly: same steps expected
  update, plain_update = jax.jit(injected.update), jax.jit(plain.update)
  state, plain_state = injected.init(params), plain.init(params)
  for t in range(2):
    grads = _tree(20 + t)
    out, state = update(grads, state, params)
    expected, plain_state = plain_update(grads, plain_state, params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8), out, expected)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(float(schedule(t)))
  # Scheduled hyper-parameters are recomputed each step; set a constant one by
  # hand instead: momentum 0 makes the ROOT step depend on this gradient only.
  constant = optax.inject_hyperparams(root_optax.root, static_args=("ns_steps",))(
      learning_rate=LR, variant="paper", beta=0.95, weight_decay=0.0, ns_coeffs=MUON,
      threshold_method="exact")
  update = jax.jit(constant.update)
  _, state = update(_tree(30), constant.init(params), params)
  state.hyperparams["beta"] = jnp.asarray(0.0)
  grads = _tree(31)
  out, _ = update(grads, state, params)
  buf = np.zeros((4, 6))
  want, _ = _reference.root_matrix_step(np.zeros((4, 6)), np.asarray(grads["w"], np.float64), buf, LR,
                                        [MUON] * 5, mu=0.0, wd=0.0)
  np.testing.assert_allclose(out["w"], want, rtol=1e-5, atol=1e-7)


def test_inject_hyperparams_without_static_ns_steps_says_how_to_fix_it():
  with pytest.raises(TypeError, match=r"ns_steps.*static_args=\('ns_steps',\)"):
    optax.inject_hyperparams(root_optax.root)(learning_rate=LR).init(_tree(0))


# -- MultiSteps, chain, partition, masks, apply_if_finite ------------------- #

@pytest.mark.parametrize("dtype", ["bfloat16"])  # float32 runs in every other test here
def test_multisteps_accumulates_then_steps_on_the_mean(dtype):
  params = _tree(7, dtype=dtype)
  grads = [_tree(40 + t, dtype=dtype) for t in range(3)]
  tx = optax.MultiSteps(_root(), every_k_schedule=3)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for g in grads[:2]:
    out, state = update(g, state, params)
    _assert_trees_equal(out, jax.tree.map(jnp.zeros_like, g))
  out, state = update(grads[2], state, params)
  mean = jax.tree.map(lambda *g: sum(x.astype(jnp.float32) for x in g) / 3, *grads)
  inner = _root()
  expected, _ = jax.jit(inner.update)(jax.tree.map(lambda m: m.astype(dtype), mean), inner.init(params), params)
  tol = 1e-5 if dtype == "float32" else 2e-2
  for k in out:
    assert out[k].dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(out[k], np.float32), np.asarray(expected[k], np.float32),
                               rtol=tol, atol=tol * float(jnp.max(jnp.abs(expected[k]))), err_msg=k)
  assert int(state.gradient_step) == 1


def test_chain_with_clip_by_global_norm_matches_reference():
  params = _tree(8)
  tx = optax.chain(optax.clip_by_global_norm(1.0), _root())
  state = tx.init(params)
  np_params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  buf = {k: np.zeros(v.shape) for k, v in params.items()}
  adam = (np.zeros(6), np.zeros(6))
  update = jax.jit(tx.update)
  for t, scale in enumerate([10.0, 0.1], start=1):  # clipped, then not
    grads = _tree(50 + t, scale)
    updates, state = update(grads, state, params)
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
    g = {k: x * min(1.0, 1.0 / norm) for k, x in g.items()}
    for k in ("w", "v"):
      want, buf[k] = _reference.root_matrix_step(np_params[k], g[k], buf[k], LR, [MUON] * 5)
      np.testing.assert_allclose(updates[k], want - np_params[k], rtol=1e-4, atol=1e-7, err_msg=k)
    want_b, *adam = _reference.adamw_step(np_params["b"], g["b"], *adam, t, LR)
    np.testing.assert_allclose(updates["b"], want_b - np_params["b"], rtol=1e-4, atol=1e-8)


def test_multi_transform_with_user_labels_around_root():
  params = _tree(9)
  grads = _tree(60)
  labels = {"w": "root", "v": "sgd", "b": "root"}
  tx = optax.multi_transform({"root": _root(), "sgd": optax.sgd(0.1)}, labels)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(updates["v"], -0.1 * grads["v"], rtol=1e-6)
  sub = {k: params[k] for k in ("w", "b")}
  alone = _root()
  expected, _ = jax.jit(alone.update)({k: grads[k] for k in sub}, alone.init(sub), sub)
  for k in sub:
    np.testing.assert_allclose(updates[k], expected[k], rtol=1e-6, atol=1e-8, err_msg=k)


def test_masked_weight_decay_in_a_nested_tree():
  params = {"embed": {"embedding": jnp.ones((8, 4))}, "dense": {"kernel": jnp.ones((4, 6)), "bias": jnp.ones(6)},
            "norm": {"scale": jnp.ones(6)}}
  decay_kernels = lambda p: jax.tree.map(lambda x: x.ndim == 2, p)
  tx = root_optax.root(0.5, weight_decay=0.1, weight_decay_mask=decay_kernels,
                       param_labels=root_optax.route_by_path(("embed",)), ns_coeffs=MUON)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
  # Zero gradients: the update is the decay alone, -lr * wd * p where masked.
  np.testing.assert_allclose(updates["embed"]["embedding"], -0.05, rtol=1e-6)  # AdamW leaf, decayed
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.05, rtol=1e-6)  # ROOT leaf, decayed
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["norm"]["scale"], 0.0)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_apply_if_finite_skips_the_step_and_keeps_the_state(bad):
  params = _tree(11)
  tx = optax.apply_if_finite(_root(), max_consecutive_errors=3)
  update = jax.jit(tx.update)
  state = tx.init(params)
  _, state = update(_tree(70), state, params)
  before = state.inner_state
  broken = _tree(71)
  broken["w"] = broken["w"].at[0, 0].set(bad)
  out, state = update(broken, state, params)
  _assert_trees_equal(out, jax.tree.map(jnp.zeros_like, out))
  _assert_trees_equal(state.inner_state, before)
  assert int(state.notfinite_count) == 1 and not bool(state.last_finite)
  out, state = update(_tree(72), state, params)
  # The same as a run that never saw the broken gradient.
  plain = _root()
  plain_state = plain.init(params)
  plain_update = jax.jit(plain.update)
  _, plain_state = plain_update(_tree(70), plain_state, params)
  expected, _ = plain_update(_tree(72), plain_state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), out, expected)
  assert int(state.notfinite_count) == 0 and int(state.total_notfinite) == 1
