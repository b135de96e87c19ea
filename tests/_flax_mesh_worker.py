"""Trains a MiniGPT-tutorial-style sharded Flax NNX model with `root()` on CPU host devices.

XLA_FLAGS must be set before jax is imported, so `test_flax_compat.py` runs
this file in a subprocess; it prints one JSON object: case name ->
``{"ok": bool, "detail": str}``. Each case builds
``nnx.Optimizer(model, root(...), wrt=nnx.Param)`` under ``jax.set_mesh``,
trains a few steps and compares the losses with the same model trained on
one device (no mesh).
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import root_optax  # noqa: E402

warnings.filterwarnings("ignore", message="root_optax: coefficients")
VOCAB, D, HIDDEN, SEQ, BATCH = 32, 16, 64, 8, 8
STEPS, LR = 12, 3e-2
# Sharded and single-device programs sum in different orders; a wrong sharding
# of a state (e.g. a figure of one matrix applied to another) moves the loss by O(0.1).
LOSS_RTOL = 2e-3
# (mesh shape, axis names, batch axis of the data): the (2, 1) mesh, a 1-D
# tensor-parallel mesh and a 2-D data x tensor-parallel mesh.
MESHES = {
    "2x1": ((2, 1), ("batch", "model"), "batch"),
    "8": ((8,), ("model",), None),
    "2x4": ((2, 4), ("batch", "model"), "batch"),
}
VARIANTS = ("robust", "paper")


class MiniGPT(nnx.Module):
  """The tutorial's layout: embeddings, norm scales and kernels sharded on 'model'."""

  def __init__(self, rngs: nnx.Rngs, sharded: bool, batch_axis):
    spec = lambda *axes: {"out_sharding": P(*axes)} if sharded else {}
    self.batch_axis, self.sharded = batch_axis, sharded
    self.embed = nnx.Embed(VOCAB, D, embedding_metadata=spec(None, "model"), rngs=rngs)
    self.norm = nnx.LayerNorm(D, scale_metadata=spec("model"), bias_metadata=spec("model"), rngs=rngs)
    self.up = nnx.Linear(D, HIDDEN, kernel_metadata=spec(None, "model"),
                         bias_metadata=spec("model"), rngs=rngs)
    self.down = nnx.Linear(HIDDEN, D, kernel_metadata=spec("model", None),
                           bias_metadata=spec(None), rngs=rngs)
    self.head = nnx.Linear(D, VOCAB, kernel_metadata=spec(None, "model"),
                           bias_metadata=spec("model"), rngs=rngs)

  def __call__(self, tokens):
    out = P(self.batch_axis, None, None) if self.sharded else None
    x = self.embed(tokens, out_sharding=out)
    h = jax.nn.gelu(self.up(self.norm(x)))
    x = x + self.down(h, out_sharding=out)
    return self.head(x)


def batch(step: int) -> tuple[jax.Array, jax.Array]:
  """A fixed next-token task: each sequence counts up by a stride, mod VOCAB."""
  rng = np.random.default_rng(step % 4)
  start = rng.integers(0, VOCAB, size=(BATCH, 1))
  stride = rng.integers(1, 4, size=(BATCH, 1))
  seq = (start + stride * np.arange(SEQ + 1)) % VOCAB
  return jnp.asarray(seq[:, :-1], jnp.int32), jnp.asarray(seq[:, 1:], jnp.int32)


def loss_fn(model, tokens, targets):
  logits = model(tokens).astype(jnp.float32)
  # One-hot, not integer labels: a gather along the sharded vocabulary axis
  # needs an explicit out_sharding under Explicit mesh axes.
  return optax.softmax_cross_entropy(logits, jax.nn.one_hot(targets, VOCAB)).mean()


@nnx.jit
def train_step(model, optimizer, tokens, targets):
  loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, targets)
  optimizer.update(model, grads)
  return loss


def train(variant: str, mesh_name: str | None):
  """Losses of STEPS steps, and the optimizer (for its state's shardings)."""
  sharded = mesh_name is not None
  batch_axis = MESHES[mesh_name][2] if sharded else None
  model = MiniGPT(nnx.Rngs(0), sharded, batch_axis)
  optimizer = nnx.Optimizer(model, root_optax.root(LR, variant=variant), wrt=nnx.Param)
  losses = []
  for step in range(STEPS):
    tokens, targets = batch(step)
    if sharded:
      tokens, targets = (jax.sharding.reshard(a, P(batch_axis, None)) for a in (tokens, targets))
    losses.append(float(train_step(model, optimizer, tokens, targets)))
  return np.asarray(losses), model, optimizer


def _spec(x) -> tuple:
  spec = jax.typeof(x).sharding.spec
  return tuple(spec) + (None,) * (x.ndim - len(spec))


def check_state(model, optimizer) -> list[str]:
  """Momentum sharded like its parameter; every per-matrix figure replicated."""
  problems = []
  params = {jax.tree_util.keystr(p): _spec(x) for p, x in
            jax.tree_util.tree_flatten_with_path(nnx.as_pure(nnx.state(model, nnx.Param)))[0]}
  state = jax.tree_util.tree_flatten_with_path(nnx.as_pure(optimizer.opt_state))[0]
  with_momentum = set()
  for path, x in state:
    text = jax.tree_util.keystr(path)
    if any(f".{field}[" in text for field in ("trace", "mu", "nu")):
      name = next((name for name in params if text.endswith(name)), None)
      with_momentum.add(name)
      if name is None or params[name] != _spec(x):
        problems.append(f"{text}: {_spec(x)}, its parameter {params.get(name)}")
    elif ".stats[" in text and any(s is not None for s in _spec(x)):
      problems.append(f"{text} (shape {x.shape}) is sharded {_spec(x)}")
  if with_momentum != set(params):
    problems.append(f"momentum for {sorted(with_momentum)}, parameters {sorted(params)}")
  return problems


def run_case(variant: str, mesh_name: str, reference: np.ndarray) -> dict:
  shape, names, _ = MESHES[mesh_name]
  with jax.set_mesh(jax.make_mesh(shape, names)):
    losses, model, optimizer = train(variant, mesh_name)
    problems = check_state(model, optimizer)
  gap = float(np.max(np.abs(losses - reference) / reference))
  if gap > LOSS_RTOL:
    problems.append(f"losses {losses.round(4).tolist()} vs one device {reference.round(4).tolist()}")
  if not losses[-1] < 0.6 * losses[0]:
    problems.append(f"loss went from {losses[0]:.4f} to {losses[-1]:.4f}: did not train")
  detail = f"loss {losses[0]:.4f} -> {losses[-1]:.4f}, max relative gap to one device {gap:.1e}"
  return {"ok": not problems, "detail": "; ".join(problems) or detail}


def main():
  report = {}
  for variant in VARIANTS:
    reference, _, _ = train(variant, None)
    for mesh_name in MESHES:
      case = f"{variant}-{mesh_name}"
      try:
        report[case] = run_case(variant, mesh_name, reference)
      except Exception:  # pylint: disable=broad-except  (reported, the test fails on it)
        report[case] = {"ok": False, "detail": traceback.format_exc()[-1500:]}
  print(json.dumps(report))


if __name__ == "__main__":
  main()
