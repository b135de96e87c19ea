"""Small models for the examples.

* `Transformer`: a decoder-only byte-level language model in Flax NNX (RMSNorm,
  rotary positions, GELU MLP, untied embedding and LM head); ``dtype`` sets
  its compute dtype (e.g. bfloat16), its parameters stay float32.
* `ViT`: a tiny vision transformer in Flax linen for 8x8 digits.
* `GPT`: a small decoder-only transformer in Flax linen whose kernel names
  (``attn_q`` ... ``mlp_out``) the pjit example shards Megatron-style.
* `MLP`: three dense layers in Flax linen (the multi-host example).

Every weight matrix is a 2-D ``kernel`` so that ROOT and Muon treat it as one
matrix; the embeddings and the classifier/LM heads carry ``embed`` / ``head``
in their names, which `root_optax.route_by_path()` sends to AdamW.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

_INIT = nnx.initializers.normal(0.02)


def rotary(x: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Rotary position embedding of ``x`` with shape ``(batch, time, heads, dim)``."""
  time, dim = x.shape[1], x.shape[-1]
  half = dim // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.arange(time, dtype=jnp.float32)[:, None] * freqs[None]
  cos = jnp.cos(angles)[None, :, None, :].astype(x.dtype)
  sin = jnp.sin(angles)[None, :, None, :].astype(x.dtype)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def _linear(d_in: int, d_out: int, rngs: nnx.Rngs, dtype=None) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, use_bias=False, kernel_init=_INIT, dtype=dtype, rngs=rngs)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with rotary positions."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.num_heads = num_heads
    self.query = _linear(d_model, d_model, rngs, dtype)
    self.key = _linear(d_model, d_model, rngs, dtype)
    self.value = _linear(d_model, d_model, rngs, dtype)
    self.out = _linear(d_model, d_model, rngs, dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.num_heads, d // self.num_heads)
    q, k = rotary(split(self.query(x))), rotary(split(self.key(x)))
    y = jax.nn.dot_product_attention(q, k, split(self.value(x)), is_causal=True)
    return self.out(y.reshape(b, t, d))


class Block(nnx.Module):
  """Pre-norm transformer block: attention then a 4x GELU MLP."""

  def __init__(self, d_model: int, num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.norm1 = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
    self.attn = CausalSelfAttention(d_model, num_heads, rngs=rngs, dtype=dtype)
    self.norm2 = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
    self.fc = _linear(d_model, 4 * d_model, rngs, dtype)
    self.proj = _linear(4 * d_model, d_model, rngs, dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.proj(jax.nn.gelu(self.fc(self.norm2(x))))


class Transformer(nnx.Module):
  """Decoder-only byte-level language model.

  ``dtype``: the compute dtype of every layer (None: float32, as the
  parameters); the parameters, and so their gradients, stay float32.
  """

  def __init__(self, vocab_size: int, d_model: int, num_layers: int,
               num_heads: int, *, rngs: nnx.Rngs, dtype=None):
    self.embed = nnx.Embed(vocab_size, d_model, embedding_init=_INIT, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List(
        [Block(d_model, num_heads, rngs=rngs, dtype=dtype) for _ in range(num_layers)])
    self.norm = nnx.RMSNorm(d_model, dtype=dtype, rngs=rngs)
    self.lm_head = _linear(d_model, vocab_size, rngs, dtype)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens)
    for block in self.blocks:
      x = block(x)
    return self.lm_head(self.norm(x))


class ViTBlock(nn.Module):
  """Pre-norm ViT block with 2-D q/k/v/out kernels."""
  d_model: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    y = nn.LayerNorm(name="norm1")(x)
    split = lambda z: z.reshape(b, t, self.num_heads, d // self.num_heads)
    q, k, v = (split(nn.Dense(d, use_bias=False, name=n)(y)) for n in ("query", "key", "value"))
    y = jax.nn.dot_product_attention(q, k, v).reshape(b, t, d)
    x = x + nn.Dense(d, name="out")(y)
    y = nn.LayerNorm(name="norm2")(x)
    y = nn.Dense(self.mlp_dim, name="fc")(y)
    return x + nn.Dense(d, name="proj")(nn.gelu(y))


class ViT(nn.Module):
  """A tiny vision transformer: patches, learned positions, mean pooling."""
  num_classes: int = 10
  patch: int = 2
  d_model: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_dim: int = 128

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    b, h, w, c = images.shape
    p = self.patch
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // p) * (w // p), p * p * c)
    x = nn.Dense(self.d_model, name="patch_embed")(x)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1,) + x.shape[1:])
    x = x + pos
    for i in range(self.depth):
      x = ViTBlock(self.d_model, self.num_heads, self.mlp_dim, name=f"block_{i}")(x)
    x = nn.LayerNorm(name="norm")(x).mean(axis=1)
    return nn.Dense(self.num_classes, name="head")(x)


class GPTBlock(nn.Module):
  """Pre-norm causal attention and a 4x GELU MLP, bias-free kernels."""
  d_model: int
  heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
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
  """Token and learned position embeddings, ``layers`` blocks, an untied head."""
  vocab: int
  d_model: int
  heads: int
  layers: int
  seq_len: int

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = nn.Embed(self.vocab, self.d_model, name="embed")(tokens)
    x = x + self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.d_model))
    for i in range(self.layers):
      x = GPTBlock(self.d_model, self.heads, name=f"block_{i}")(x)
    return nn.Dense(self.vocab, use_bias=False, name="head")(nn.LayerNorm(name="ln_f")(x))


class MLP(nn.Module):
  """Three dense layers; ``up``/``mid`` are split over the model axis (Megatron)."""
  hidden: int
  classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden, name="up")(x))
    x = nn.relu(nn.Dense(self.hidden, name="mid")(x))
    return nn.Dense(self.classes, name="head")(x)
