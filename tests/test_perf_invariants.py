"""Structural performance invariants of the ROOT step (no timing assertions).

Checked on the traced program: the state kept between steps, the number of
Newton-Schulz matmuls (one batched iteration per distinct shape, not per
leaf), the absence of a sort in the default threshold, and the FLOP count
that the benchmarks report (`ns_flops`) against the matmuls actually traced.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax
from root_optax._src import newton_schulz as ns_lib


# Two blocks of a small GPT: 3 distinct (min, max) shapes over 8 matrices.
D = 16


def _params():
  rng = np.random.default_rng(0)
  block = lambda: {"qkv": (D, 3 * D), "proj": (D, D), "fc": (D, 4 * D), "out": (4 * D, D), "ln": (D,)}
  tree = {f"h{i}": block() for i in range(2)}
  tree["wte"] = (40, D)
  return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), tree,
                      is_leaf=lambda x: isinstance(x, tuple))


def _root(**kwargs):
  # 'muon': one triple for every shape (the table has no shape entries, and warns of none).
  return root_optax.root(1e-3, param_labels=root_optax.route_by_path(("wte",)),
                         ns_coeffs="muon", **kwargs)


def _update_jaxpr(tx, params):
  state = tx.init(params)
  return jax.make_jaxpr(lambda g, s: tx.update(g, s, params))(params, state)


def _eqns(jaxpr, times=1):
  """``(equation, executions)`` for all equations, recursing into sub-jaxprs.

  A ``scan`` body runs ``length`` times; other sub-jaxprs count once.
  """
  for eqn in jaxpr.eqns:
    yield eqn, times
    inner_times = times * eqn.params.get("length", 1) if eqn.primitive.name == "scan" else times
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _eqns(inner, inner_times)


def _dot_flops(jaxpr) -> list[int]:
  flops = []
  for eqn, times in _eqns(jaxpr.jaxpr):
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[d] for d in contract)
      flops.extend([2 * k * math.prod(eqn.outvars[0].aval.shape)] * times)
  return flops


def test_state_is_one_momentum_buffer_per_root_leaf_and_o_m_plus_n_beyond():
  params = _params()
  state = _root().init(params)
  buffers = jax.tree.leaves(root_optax.momentum_buffer(state))
  matrices = [p.shape for p in jax.tree.leaves(params) if p.ndim == 2 and p.shape != (40, D)]
  assert sorted(x.shape for x in buffers) == sorted(matrices)
  assert all(x.dtype == jnp.float32 for x in buffers)
  # Beyond the momentum: the gate's row and column histories (m + n per
  # matrix) and O(1) figures per matrix (gate, burst guard).
  root_state = state.inner_states["root"].inner_state
  arrays = [x for x in jax.tree.leaves(root_state) if hasattr(x, "shape")]
  beyond = sum(x.size for x in arrays) - sum(x.size for x in buffers)
  assert beyond <= sum(m + n + 12 for m, n in matrices)


@pytest.mark.parametrize("method", ["fast", "exact"])
def test_one_newton_schulz_per_shape_not_per_leaf(method):
  jaxpr = _update_jaxpr(_root(threshold_method=method), _params())
  dots = len(_dot_flops(jaxpr))
  steps = 5
  # (D, 3D) and (D, 4D) groups take the Gram form, (D, D) the standard one.
  expected = 2 * (4 * steps - 1) + 3 * steps
  assert dots == expected, (dots, expected)


def test_default_sorts_nothing_and_the_papers_fast_threshold_only_samples():
  """The default's gate sorts nothing; the paper's fast threshold sorts at most a
  ~1024-entry sample per matrix, and 'exact' sorts all."""
  params = {"w": jnp.ones((64, 96)), "v": jnp.ones((96, 64)), "b": jnp.ones((64,))}
  sorted_sizes = lambda tx: [e.invars[0].aval.shape[-1] for e, _ in _eqns(_update_jaxpr(tx, params).jaxpr)
                             if e.primitive.name == "sort"]
  sizes = {x.shape[-2] * x.shape[-1] for x in jax.tree.leaves(params) if x.ndim >= 2}
  assert not sorted_sizes(_root())
  assert max(sorted_sizes(_root(variant="paper"))) <= 1025 < max(sizes)
  assert max(sorted_sizes(_root(variant="paper", threshold_method="exact"))) == max(sizes)


@pytest.mark.parametrize("shape", [(8, 8), (8, 24), (24, 8), (8, 32), (3, 5, 40)])
@pytest.mark.parametrize("method", ["standard", "gram"])
@pytest.mark.parametrize("restarts", [(), (2,), (1, 3)])
def test_ns_flops_matches_traced_matmuls(shape, method, restarts):
  coeffs = [(3.4445, -4.7750, 2.0315)] * 5
  ns = lambda x: ns_lib.newton_schulz(x, coeffs, method=method, gram_restarts=restarts)
  jaxpr = jax.make_jaxpr(ns)(jnp.ones(shape))
  batch = math.prod(shape[:-2])
  count = len(restarts) if method == "gram" else 0
  assert sum(_dot_flops(jaxpr)) == batch * ns_lib.ns_flops(shape[-2], shape[-1], 5, method, count)


def test_auto_method_picks_the_cheaper_form():
  assert ns_lib.resolve_method("auto", 768, 3072, 5, jnp.float32) == "gram"
  assert ns_lib.resolve_method("auto", 3072, 768, 5, jnp.float32) == "gram"
  assert ns_lib.resolve_method("auto", 768, 768, 5, jnp.float32) == "standard"
  assert ns_lib.ns_flops(768, 3072, 5, "gram") < 0.6 * ns_lib.ns_flops(768, 3072, 5, "standard")
  assert ns_lib.resolve_method("auto", 768, 3072, 5, jnp.bfloat16) == "standard"
  assert ns_lib.resolve_method("auto", 512, 800, 5, jnp.float32) == "gram"
  assert ns_lib.resolve_method("auto", 512, 768, 5, jnp.float32) == "standard"
  # bf16's Gram form restarts once (default_restarts): 4 m n^2 more, 6 n^3 less.
  assert ns_lib.default_restarts(5, jnp.bfloat16) == (2,)
  assert ns_lib.default_restarts(5, jnp.float32) == ()
  assert ns_lib.ns_flops(768, 3072, 5, "gram", 1) < 0.7 * ns_lib.ns_flops(768, 3072, 5, "standard")


def test_optax_muon_does_the_standard_flops():
  """The baseline of the benchmarks: optax's Muon traces the standard count."""
  x = jnp.ones((16, 48))
  jaxpr = jax.make_jaxpr(lambda v: optax.contrib._muon.orthogonalize_via_newton_schulz(
      v, jnp.asarray((3.4445, -4.7750, 2.0315)), 5))(x)
  assert sum(_dot_flops(jaxpr)) == ns_lib.ns_flops(16, 48, 5, "standard")


def _distinct_kernels(fn, *args) -> int:
  """Distinct fused kernels in ``fn``'s compiled HLO, up to names (each costs compile time)."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  bodies = set()
  for block in re.findall(r"^%fused_computation[^\n]*\{\n(.*?)\n\}", text, re.M | re.S):
    block = re.sub(r", metadata=\{[^}]*\}", "", block)
    bodies.add(re.sub(r"%[\w.\-]+", "%v", block))
  return len(bodies)


def test_unstacking_compiles_one_kernel_per_shape_not_per_leaf():
  """Cutting Newton-Schulz stacks at opaque offsets: more leaves, not more kernels."""
  tx = root_optax.ada_newton_orthogonalize("muon")
  counts = {}
  for leaves in (4, 16):
    tree = [jnp.ones((D, 2 * D)) * (i + 1) for i in range(leaves)]
    counts[leaves] = _distinct_kernels(
        lambda g: [u * 3.0 + g_ for u, g_ in zip(tx.update(g, tx.init(g))[0], g)], tree)
  assert counts[16] <= counts[4] + 2, counts  # static offsets: 14 -> 27
