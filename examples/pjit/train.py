"""Trains a small Flax GPT with ROOT on a device mesh (FSDP x tensor parallel).

The parameters live on a ``('data', 'model')`` mesh as `NamedSharding`
arrays: attention and MLP kernels Megatron-style (column / row parallel over
``'model'``, their other axis over ``'data'``, FSDP), the batch over
``'data'``. `root(sharding='auto')` orthogonalises whole matrices per device
(`root`'s ``sharding=``); ``config.sharding = 'none'`` leaves Newton-Schulz to XLA's
partitioner for comparison. The command line (`examples/pjit/main.py`) asks
XLA for 8 CPU host devices (unless XLA_FLAGS already sets a count); on
GPUs/TPUs it uses the devices there are, unchanged.
"""

from __future__ import annotations

import statistics
import time
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

import root_optax
from examples.common import data
from examples.common import models
from examples.common import runtime

SHARDINGS = ("auto", "mesh", "none")  # config.sharding: root(sharding="auto" | mesh | None)
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
  # with all-to-alls (`root`'s ``sharding=``); the model runs with Auto axes.
  return jax.make_mesh((n // model, model), ("data", "model"),
                       axis_types=(AxisType.Explicit, AxisType.Explicit))


def make_optimizer(config: ml_collections.ConfigDict, mesh) -> optax.GradientTransformation:
  sharding = None if config.sharding == "none" else ("auto" if config.sharding == "auto" else mesh)
  return root_optax.root(
      optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, min(10, config.steps - 1), config.steps),
      param_labels=root_optax.route_by_path(("embed", "head", "pos")),
      sharding=sharding)


def make_model(config: ml_collections.ConfigDict) -> models.GPT:
  return models.GPT(vocab=config.vocab, d_model=config.d_model, heads=config.heads,
                    layers=config.layers, seq_len=config.seq_len)


def train(config: ml_collections.ConfigDict):
  """Trains; returns ``(losses per logged step, median step seconds)``."""
  mesh = make_mesh()
  model = make_model(config)
  tx = make_optimizer(config, mesh)
  batches = data.affine_sequences(config.batch, config.seq_len, config.vocab,
                                  np.random.default_rng(config.seed))
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
      tokens = jax.device_put(next(batches)[:, : config.seq_len + 1], batch_sharding)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains ``config``, prints the logged losses and writes them to ``workdir/losses.csv``.

  Returns:
    ``(losses, median step seconds)``, ``losses`` a list of ``(step, loss)``.
  """
  if config.sharding not in SHARDINGS:
    raise ValueError(f"config.sharding must be one of {SHARDINGS}, got {config.sharding!r}")
  out = runtime.make_workdir(workdir)
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
  runtime.write_csv(out / "losses.csv", [{"step": s, "loss": l} for s, l in losses])
  return losses, step_time
