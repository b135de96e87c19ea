"""Trains a small Flax GPT with ROOT on a device mesh (FSDP x tensor parallel).

The parameters live on a ``('data', 'model')`` mesh as `NamedSharding`
arrays: attention and MLP kernels Megatron-style (column / row parallel over
``'model'``, their other axis over ``'data'``, FSDP), the batch over
``'data'``. `root(sharding='auto')` orthogonalises whole matrices per device
(`root_optax.sharding`); ``--sharding none`` leaves Newton-Schulz to XLA's
partitioner for comparison. On a CPU-only machine the script asks XLA for 8
host devices (unless XLA_FLAGS already sets a count); on GPUs/TPUs it uses
the devices there are, unchanged.

  python examples/train_pjit.py --quick            # < 1 min on CPU
  python examples/train_pjit.py --steps 300 --sharding none
"""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  # Only affects the CPU platform; GPUs/TPUs keep their real devices.
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

import root_optax  # noqa: E402


@dataclasses.dataclass
class Config:
  vocab: int = 64
  d_model: int = 128
  heads: int = 4
  layers: int = 4
  seq_len: int = 32
  batch: int = 32
  steps: int = 200
  learning_rate: float = 0.02
  log_every: int = 20
  sharding: str = "auto"
  seed: int = 0


QUICK = dict(d_model=64, layers=2, steps=30, log_every=10)


class Block(nn.Module):
  d_model: int
  heads: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm(name="ln_1")(x)
    q, k, v = (nn.Dense(self.d_model, use_bias=False, name=n)(h) for n in ("attn_q", "attn_k", "attn_v"))
    split = lambda t: t.reshape(t.shape[:-1] + (self.heads, -1))
    mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
    att = nn.dot_product_attention(split(q), split(k), split(v), mask=mask)
    x = x + nn.Dense(self.d_model, use_bias=False, name="attn_o")(att.reshape(x.shape))
    h = nn.LayerNorm(name="ln_2")(x)
    h = nn.gelu(nn.Dense(4 * self.d_model, use_bias=False, name="mlp_in")(h))
    return x + nn.Dense(self.d_model, use_bias=False, name="mlp_out")(h)


class GPT(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, tokens):
    c = self.config
    x = nn.Embed(c.vocab, c.d_model, name="embed")(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (c.seq_len, c.d_model))
    for i in range(c.layers):
      x = Block(c.d_model, c.heads, name=f"block_{i}")(x)
    return nn.Dense(c.vocab, use_bias=False, name="head")(nn.LayerNorm(name="ln_f")(x))


COLUMN_PARALLEL = ("attn_q", "attn_k", "attn_v", "mlp_in")
ROW_PARALLEL = ("attn_o", "mlp_out")


def param_spec(path, x) -> P:
  """Megatron tensor parallelism over 'model' plus FSDP over 'data'."""
  names = [getattr(k, "key", "") for k in path]
  if x.ndim != 2:
    return P()
  if any(n in COLUMN_PARALLEL for n in names):
    return P("data", "model")
  if any(n in ROW_PARALLEL for n in names):
    return P("model", "data")
  return P("data", None)  # embed, head, pos: FSDP only


def make_mesh() -> jax.sharding.Mesh:
  n = len(jax.devices())
  model = next(m for m in (4, 2, 1) if n % m == 0)
  # Explicit axes: every array's sharding is part of its type, so that the
  # optimizer knows each matrix's layout and moves whole matrices to devices
  # with all-to-alls (`root_optax.sharding`); the model runs with Auto axes.
  return jax.make_mesh((n // model, model), ("data", "model"),
                       axis_types=(AxisType.Explicit, AxisType.Explicit))


def batches(config: Config, rng: np.random.Generator):
  """Sequences of an affine recurrence t -> (a t + b) mod vocab, (a, b) per sequence."""
  while True:
    a = rng.integers(1, 4, size=(config.batch, 1))
    b = rng.integers(0, config.vocab, size=(config.batch, 1))
    start = rng.integers(0, config.vocab, size=(config.batch, 1))
    seq = [start]
    for _ in range(config.seq_len):
      seq.append((a * seq[-1] + b) % config.vocab)
    yield np.concatenate(seq, axis=1).astype(np.int32)


def make_optimizer(config: Config, mesh) -> optax.GradientTransformation:
  sharding = None if config.sharding == "none" else ("auto" if config.sharding == "auto" else mesh)
  return root_optax.root(
      optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, min(10, config.steps - 1), config.steps),
      param_labels=root_optax.route_by_path(("embed", "head", "pos")),
      sharding=sharding)


def train(config: Config):
  """Trains; returns ``(losses per logged step, median step seconds)``."""
  mesh = make_mesh()
  model = GPT(config)
  tx = make_optimizer(config, mesh)
  data = batches(config, np.random.default_rng(config.seed))
  batch_sharding = NamedSharding(mesh, P("data", None))

  params = model.init(jax.random.key(config.seed), jnp.zeros((1, config.seq_len), jnp.int32))
  shardings = jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, param_spec(path, x)), params)
  params = jax.device_put(params, shardings)
  # Eager init: the momentum buffers take their parameter's sharding. Step
  # counts are put on the mesh as jit returns them, so step 2 does not recompile.
  state = tx.init(params)
  replicated = NamedSharding(mesh, P())
  state = jax.tree.map(
      lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated), state)

  def loss_fn(params, tokens):
    logits = model.apply(params, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  # The forward and backward pass with Auto axes (XLA propagates shardings
  # through the model's matmuls); the gradients come out with the params' shardings.
  loss_and_grads = jax.sharding.auto_axes(
      jax.value_and_grad(loss_fn), out_sharding=(replicated, shardings))

  @jax.jit
  def train_step(params, state, tokens):
    loss, grads = loss_and_grads(params, tokens)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses, times = [], []
  with jax.set_mesh(mesh):
    for step in range(1, config.steps + 1):
      tokens = jax.device_put(next(data)[:, : config.seq_len + 1], batch_sharding)
      start = time.perf_counter()
      params, state, loss = train_step(params, state, tokens)
      loss = float(loss)
      elapsed = time.perf_counter() - start
      if step > 1:  # the first step compiles
        times.append(elapsed)
      if step % config.log_every == 0 or step == 1:
        losses.append((step, loss))
        timing = f"compile + step {elapsed:.2f} s" if step == 1 else f"step time {elapsed:.4f} s"
        print(f"step {step:5d}  loss {loss:.4f}  {timing}", flush=True)
  for leaf, want in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), "a parameter changed sharding"
  return losses, statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a tiny model, 30 steps")
  parser.add_argument("--steps", type=int)
  parser.add_argument("--sharding", choices=("auto", "mesh", "none"), default="auto")
  args = parser.parse_args(argv)
  config = Config(**(QUICK if args.quick else {}), sharding=args.sharding)
  if args.steps:
    config.steps = args.steps
  warnings.filterwarnings("ignore", message="root_optax: no ")  # uncalibrated shapes: Muon's triple
  devices = jax.devices()
  print(f"{len(devices)} x {devices[0].platform} devices, mesh {dict(make_mesh().shape)}, "
        f"sharding={config.sharding}, {config.layers} layers, d={config.d_model}")
  losses, step_time = train(config)
  print(f"{'step':>6} {'loss':>8}")
  for step, loss in losses:
    print(f"{step:>6} {loss:>8.4f}")
  print(f"first loss {losses[0][1]:.4f}, last loss {losses[-1][1]:.4f}, "
        f"median step time {step_time * 1e3:.1f} ms")
  return losses, step_time


if __name__ == "__main__":
  main()
