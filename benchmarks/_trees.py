"""GPT-shaped parameter trees for the benchmarks (nanoGPT / GPT-2 layout).

Each block holds ``attn/c_attn`` (d x 3d, fused q, k, v), ``attn/c_proj``
(d x d), ``mlp/c_fc`` (d x 4d) and ``mlp/c_proj`` (4d x d) kernels, their
biases and two LayerNorms; the model adds token and position embeddings
(``wte``, ``wpe``) and a final LayerNorm; the LM head is tied to ``wte``.
Both optimizers send the embeddings and every non-matrix leaf to AdamW, as
the ROOT reference script does, and the four block kernels to the matrix
optimizer.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

import root_optax

EMBEDDINGS = ("wte", "wpe")
# Both optimizers get these, so that they differ only in ROOT's own stages: the
# arguments whose defaults differ between `root()` (ROOT's reference script)
# and `optax.contrib.muon`, at root()'s values.
MATCHED = dict(eps=1e-7, weight_decay=0.1, adam_weight_decay=0.1, adam_b2=0.95,
               consistent_rms=0.2)


@dataclasses.dataclass(frozen=True)
class TreeSpec:
  name: str
  layers: int
  d: int
  vocab: int = 50304
  context: int = 1024
  fused_qkv: bool = True  # False: separate q, k, v, o projections (d x d each)


TREES = {
    "gpt-12x768": TreeSpec("gpt-12x768", 12, 768),
    "gpt-24x1024": TreeSpec("gpt-24x1024", 24, 1024),
    "gpt-48x256": TreeSpec("gpt-48x256", 48, 256),
    # --quick variants: same layout, small enough for a few seconds a step.
    "gpt-4x384": TreeSpec("gpt-4x384", 4, 384, vocab=8192, context=512),
    "gpt-16x128": TreeSpec("gpt-16x128", 16, 128, vocab=8192, context=512),
    "gpt-8x320-qkvo": TreeSpec("gpt-8x320-qkvo", 8, 320, vocab=8192, context=512, fused_qkv=False),
    # The test suite's smoke runs (tests/test_benchmarks.py): compiles in seconds.
    "gpt-2x64": TreeSpec("gpt-2x64", 2, 64, vocab=512, context=128),
}
DEFAULT = ("gpt-12x768", "gpt-48x256")
QUICK = ("gpt-4x384", "gpt-16x128", "gpt-8x320-qkvo")
SMOKE = "gpt-2x64"


def shapes(spec: TreeSpec) -> dict:
  """The parameter tree as nested dicts of shapes."""
  d = spec.d
  norm = lambda: {"scale": (d,), "bias": (d,)}
  dense = lambda i, o: {"kernel": (i, o), "bias": (o,)}
  if spec.fused_qkv:
    attn = {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)}
  else:
    attn = {name: dense(d, d) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
  block = {
      "ln_1": norm(), "attn": attn,
      "ln_2": norm(), "mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)},
  }
  tree = {"wte": (spec.vocab, d), "wpe": (spec.context, d), "ln_f": norm()}
  tree.update({f"h{i:02d}": block for i in range(spec.layers)})
  return tree


def _is_shape(x) -> bool:
  return isinstance(x, tuple) and all(isinstance(v, int) for v in x)


def make(spec: TreeSpec, seed: int = 0, dtype=jnp.float32, scale: float = 0.02) -> dict:
  """Random arrays of the tree's shapes (Student-t entries: heavy tails)."""
  leaves, treedef = jax.tree.flatten(shapes(spec), is_leaf=_is_shape)
  rng = np.random.default_rng(seed)
  arrays = [jnp.asarray(scale * rng.standard_t(4, size=s), dtype) for s in leaves]
  return jax.tree.unflatten(treedef, arrays)


def is_matrix_path(path, leaf) -> bool:
  """True for the block kernels the matrix optimizer trains."""
  text = jax.tree_util.keystr(path)
  return leaf.ndim == 2 and not any(name in text for name in EMBEDDINGS)


def root_optimizer(learning_rate: float = 1e-3, **kwargs) -> optax.GradientTransformation:
  """`root_optax.root` with the embeddings on AdamW and the `MATCHED` settings."""
  # The 'muon' preset is one triple for every shape: its fallback warning is noise here.
  warnings.filterwarnings("ignore", message="root_optax: no 'muon' coefficients")
  return root_optax.root(learning_rate, param_labels=root_optax.route_by_path(EMBEDDINGS),
                         **{**MATCHED, **kwargs})


def muon_optimizer(learning_rate: float = 1e-3, **kwargs) -> optax.GradientTransformation:
  """`optax.contrib.muon` with the same routing and `MATCHED` settings as ROOT."""
  dims = lambda params: jax.tree_util.tree_map_with_path(
      lambda p, x: MuonDimensionNumbers() if is_matrix_path(p, x) else None, params)
  kwargs = {**MATCHED, **kwargs}
  return optax.contrib.muon(learning_rate, muon_weight_dimension_numbers=dims, **kwargs)


def matrix_shapes(spec: TreeSpec) -> dict[tuple[int, int], int]:
  """``{(rows, cols): count}`` of the matrices the matrix optimizer trains."""
  counts: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes(spec), is_leaf=_is_shape)[0]:
    if len(leaf) == 2 and not any(name in jax.tree_util.keystr(path) for name in EMBEDDINGS):
      counts[leaf] = counts.get(leaf, 0) + 1
  return counts


def nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def names(arg: str, quick: bool) -> tuple[str, ...]:
  """Tree names from a ``--trees`` argument (comma list, 'all') or the defaults."""
  if arg == "all":
    return tuple(n for n in TREES if n not in QUICK + (SMOKE,))
  if arg:
    chosen = tuple(arg.split(","))
    unknown = [n for n in chosen if n not in TREES]
    if unknown:
      raise SystemExit(f"unknown trees {unknown}; choose from {list(TREES)}")
    return chosen
  return QUICK if quick else DEFAULT


def make_abstract(spec: TreeSpec, dtype=jnp.float32) -> dict:
  """Zeros of the tree's shapes (use under `jax.eval_shape` to allocate nothing)."""
  return jax.tree.map(lambda s: jnp.zeros(s, dtype), shapes(spec), is_leaf=_is_shape)
