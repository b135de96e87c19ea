"""The Newton-Schulz orthogonalisation kernel (pure arrays, no pytrees).

For a matrix ``X`` with SVD ``U S V^T``, the quintic iteration
``X <- a X + (b A + c A A) X`` with ``A = X X^T`` maps every singular value
``s`` to ``g(s) = a s + b s^3 + c s^5`` and leaves ``U`` and ``V`` alone, so T
steps approximate the polar factor ``U V^T`` (paper Eq. 3). ROOT picks
``(a, b, c)`` per shape and optionally per step (AdaNewton, paper Sec. 4.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from root_optax import _validation
from root_optax import coefficients as coefficients_lib

_ACCUMULATION_DTYPE = jnp.float32


def _coefficient_rows(coeffs) -> list[tuple]:
  """Per-step ``(a, b, c)``: Python floats when static, array scalars if traced."""
  if isinstance(coeffs, (np.ndarray, Sequence)):
    arr = coefficients_lib.as_coefficient_array(coeffs)
    return [tuple(float(v) for v in row) for row in arr]
  coeffs = jnp.atleast_2d(coeffs)
  return [tuple(coeffs[i, j] for j in range(3)) for i in range(coeffs.shape[0])]


def _matmul_t(x: jax.Array, y: jax.Array, precision) -> jax.Array:
  """``x @ y^T`` over the last two axes."""
  return jnp.matmul(x, jnp.swapaxes(y, -1, -2), precision=precision)


def frobenius_normalize(x: jax.Array, eps: float) -> jax.Array:
  """``x / (||x||_F + eps)`` per matrix, without overflow for huge entries.

  The norm is computed as ``s * ||x / s||_F`` with ``s = max |x|`` in float32
  (or float64), so entries of 1e30 in float32 or bf16 do not overflow the
  sum of squares; a zero matrix stays zero.
  """
  dtype = jnp.promote_types(x.dtype, _ACCUMULATION_DTYPE)
  xf = x.astype(dtype)
  scale = jnp.max(jnp.abs(xf), axis=(-2, -1), keepdims=True)
  safe = jnp.where(scale > 0, scale, 1.0)
  norm = safe * jnp.sqrt(jnp.sum(jnp.square(xf / safe), axis=(-2, -1), keepdims=True))
  return xf / (norm + eps)


def _schatten4_rescale(x, gram, eps):
  """Divides ``x`` by ``||x||_{S4} = ||x x^T||_F^(1/2)`` (and ``gram`` by its square)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(gram.astype(_ACCUMULATION_DTYPE)), axis=(-2, -1), keepdims=True))
  inv = (1.0 / (jnp.sqrt(norm) + eps)).astype(x.dtype)
  return x * inv, gram * (inv * inv)


def _aol_rescale(x, gram, eps):
  """AOL row scaling ``D = diag(sum_j |A_ij|)^(-1/2)``: ``x <- D x``, ``A <- D A D``.

  Guarantees spectral norm <= 1 (Turbo-Muon, arXiv 2512.04632, Sec. 3).
  """
  row_sums = jnp.sum(jnp.abs(gram.astype(_ACCUMULATION_DTYPE)), axis=-1, keepdims=True)
  d = jax.lax.rsqrt(jnp.maximum(row_sums, eps * eps)).astype(x.dtype)
  return x * d, gram * d * jnp.swapaxes(d, -1, -2)


_FIRST_STEP_RESCALE = {
    "frobenius": None,
    "schatten4": _schatten4_rescale,
    "aol": _aol_rescale,
}


def newton_schulz(
    x: jax.Array,
    coeffs,
    *,
    normalization: str = "frobenius",
    eps: float = 1e-7,
    compute_dtype=None,
    precision=None,
) -> jax.Array:
  r"""Approximately orthogonalises each matrix of ``x`` with Newton-Schulz.

  ``x`` is first divided by ``||x||_F + eps`` (the reference step); with
  ``normalization='schatten4'`` or ``'aol'`` the first iteration further
  rescales by the Schatten-4 norm or by AOL row sums, reusing its Gram matrix.
  Matrices with more rows than columns are transposed so that the Gram matrix
  is the smaller one.

  Args:
    x: ``(..., m, n)`` array; leading axes are a batch.
    coeffs: ``(T, 3)`` or ``(3,)`` coefficients ``(a, b, c)``; one step per row.
    normalization: ``'frobenius'``, ``'schatten4'`` or ``'aol'``.
    eps: Added to norms in denominators.
    compute_dtype: dtype of the iteration (default: ``x.dtype``); the
      normalisation is always accumulated in at least float32.
    precision: Passed to the matmuls (e.g. ``jax.lax.Precision.HIGHEST``).

  Returns:
    An array of ``x``'s shape and dtype.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Eq. 3-4.
  """
  if x.ndim < 2:
    raise ValueError(f"newton_schulz needs a (..., m, n) array, got shape {x.shape}")
  coefficients_lib.validate_normalization(normalization)
  _validation.at_least("eps", eps, 0.0)
  _validation.float_dtype("compute_dtype", compute_dtype)
  rows = _coefficient_rows(coeffs)
  out_dtype = x.dtype
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  x = frobenius_normalize(x, eps).astype(compute_dtype or out_dtype)
  rescale = _FIRST_STEP_RESCALE[normalization]
  for step, (a, b, c) in enumerate(rows):
    gram = _matmul_t(x, x, precision)
    if step == 0 and rescale is not None:
      x, gram = rescale(x, gram, eps)
    poly = b * gram + c * jnp.matmul(gram, gram, precision=precision)
    x = a * x + jnp.matmul(poly, x, precision=precision)
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  return x.astype(out_dtype)
