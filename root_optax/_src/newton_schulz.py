"""The Newton-Schulz orthogonalisation kernel (pure arrays, no pytrees).

For a matrix ``X`` with SVD ``U S V^T``, the quintic iteration
``X <- a X + (b A + c A A) X`` with ``A = X X^T`` maps every singular value
``s`` to ``g(s) = a s + b s^3 + c s^5`` and leaves ``U`` and ``V`` alone, so T
steps approximate the polar factor ``U V^T`` (paper Eq. 3). ROOT picks
``(a, b, c)`` per shape and optionally per step (AdaNewton, paper Sec. 4.2).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from root_optax._src import normalization as normalization_lib
from root_optax._src import polynomials
from root_optax._src import validation

_ACCUMULATION_DTYPE = jnp.float32
STANDARD = "standard"
GRAM = "gram"
AUTO = "auto"
METHODS = (AUTO, STANDARD, GRAM)


def _coefficient_rows(coeffs) -> list[tuple]:
  """Per-step ``(a, b, c)``: Python floats when static, array scalars if traced."""
  if isinstance(coeffs, (np.ndarray, Sequence)):
    arr = polynomials.as_coefficient_array(coeffs)
    return [tuple(float(v) for v in row) for row in arr]
  coeffs = jnp.atleast_2d(coeffs)
  return [tuple(coeffs[i, j] for j in range(3)) for i in range(coeffs.shape[0])]


def _matmul_t(x: jax.Array, y: jax.Array, precision) -> jax.Array:
  """``x @ y^T`` over the last two axes."""
  return jnp.matmul(x, jnp.swapaxes(y, -1, -2), precision=precision)


def frobenius_normalize(x: jax.Array, eps: float) -> jax.Array:
  """``x / (||x||_F + eps)`` per matrix, in float32 or wider; a zero matrix stays zero.

  The norm is `normalization.frobenius_norm`'s, which does not overflow for
  entries of 1e30 in float32 or bf16.
  """
  norm = normalization_lib.frobenius_norm(x, keepdims=True)
  return x.astype(norm.dtype) / (norm + eps)


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


def _spectral_rescale(x, gram, eps):
  """Divides ``x`` by its largest singular value ``sqrt(lambda_max(x x^T))``.

  optax Muon's ``'spectral'`` preconditioning; the eigenvalues of the small
  Gram matrix cost far less than an SVD of ``x``.
  """
  top = jnp.linalg.eigvalsh(gram.astype(_ACCUMULATION_DTYPE))[..., -1:, None]
  inv = (1.0 / (jnp.sqrt(jnp.maximum(top, 0.0)) + eps)).astype(x.dtype)
  return x * inv, gram * (inv * inv)


_FIRST_STEP_RESCALE = {
    "frobenius": None,
    "spectral": _spectral_rescale,
    "schatten4": _schatten4_rescale,
    "aol": _aol_rescale,
}


def default_restarts(steps: int, dtype) -> tuple[int, ...]:
  """Where the Gram form re-forms ``X`` by default: nowhere in float32 or wider;
  in sub-float32 dtypes before step 2 of 3 or more (Zhang et al.'s choice
  for 5 steps; see `newton_schulz`), which bounds the growth of rounding errors
  in the accumulated polynomial (see `newton_schulz`'s ``gram_restarts``)."""
  if jnp.dtype(dtype).itemsize >= 4 or steps < 3:
    return ()
  return (2,)


def _check_restarts(restarts: Sequence[int], steps: int) -> tuple[int, ...]:
  """``restarts`` as sorted distinct ints in ``[1, steps - 1]``, or a ValueError naming them."""
  if any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) for r in restarts) or \
      any(not 1 <= r < steps for r in restarts):
    raise ValueError(f"gram_restarts must be step indices in [1, {steps - 1}] for "
                     f"{steps} steps, got {tuple(restarts)!r}")
  return tuple(sorted({int(r) for r in restarts}))


def ns_flops(rows: int, cols: int, steps: int, method: str = STANDARD, restarts: int = 0) -> int:
  """Matmul FLOPs (2 per multiply-add) of one ``rows x cols`` Newton-Schulz.

  With ``n = min(rows, cols)``, ``m = max(rows, cols)`` and ``T`` steps:
  ``'standard'`` costs ``T (4 n^2 m + 2 n^3)``; ``'gram'`` forms ``X X^T``
  once, iterates on ``n x n`` matrices (``4T - 3`` products) and applies the
  accumulated polynomial once: ``4 n^2 m + 2 n^3 (4T - 3)``. Each of
  ``restarts`` re-formations of ``X`` adds ``4 n^2 m`` and saves ``6 n^3``.
  """
  n, m = min(rows, cols), max(rows, cols)
  if method == GRAM:
    segments = restarts + 1
    return 4 * n * n * m * segments + 2 * n ** 3 * (4 * steps - 3 * segments)
  return steps * (4 * n * n * m + 2 * n ** 3)


def resolve_method(method: str, rows: int, cols: int, steps: int, dtype) -> str:
  """``'auto'``: Gram Newton-Schulz where it needs fewer FLOPs, in float32 or wider.

  Below float32 ``'auto'`` keeps the standard form. The bf16 Gram form with
  its restart is as precise (see `newton_schulz`) and trained the byte-level
  LM example no differently (``configs/lm_bf16.py``), but it has not been
  measured on an accelerator, so it is used only when asked for
  (``method='gram'``).
  """
  if method != AUTO:
    return method
  if jnp.dtype(dtype).itemsize < 4:
    return STANDARD
  cheaper = ns_flops(rows, cols, steps, GRAM) < ns_flops(rows, cols, steps, STANDARD)
  return GRAM if cheaper else STANDARD


def _standard_iteration(x, rows, rescale, eps, precision, restarts=()):
  """``X <- a X + (b A + c A^2) X`` with ``A = X X^T``, T times (``restarts``: unused)."""
  del restarts
  for step, (a, b, c) in enumerate(rows):
    gram = _matmul_t(x, x, precision)
    if step == 0 and rescale is not None:
      x, gram = rescale(x, gram, eps)
    poly = b * gram + c * jnp.matmul(gram, gram, precision=precision)
    x = a * x + jnp.matmul(poly, x, precision=precision)
  return x


def _gram_iteration(x, rows, rescale, eps, precision, restarts=()):
  """The same map on the small Gram matrix: ``X_T = Q X_0``, ``Q = prod P_t``.

  ``P_t = a I + b R_t + c R_t^2`` and ``R_{t+1} = P_t R_t P_t``: every ``P_t``
  is a polynomial in ``R_0 = X_0 X_0^T``, so the products commute and equal
  the standard iteration in exact arithmetic (Gram Newton-Schulz). Before
  each step in ``restarts``, ``X`` is re-formed as ``Q X`` and ``R`` as
  ``X X^T``, which discards the rounding errors accumulated in ``Q`` and ``R``.
  """
  gram = _matmul_t(x, x, precision)
  if rescale is not None:
    x, gram = rescale(x, gram, eps)
  eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
  acc = None
  for step, (a, b, c) in enumerate(rows):
    if step in restarts:
      x = jnp.matmul(acc, x, precision=precision)
      gram, acc = _matmul_t(x, x, precision), None
    poly = a * eye + b * gram + c * jnp.matmul(gram, gram, precision=precision)
    acc = poly if acc is None else jnp.matmul(poly, acc, precision=precision)
    if step < len(rows) - 1 and step + 1 not in restarts:
      gram = jnp.matmul(poly, jnp.matmul(gram, poly, precision=precision), precision=precision)
  return jnp.matmul(acc, x, precision=precision)


_ITERATIONS = {STANDARD: _standard_iteration, GRAM: _gram_iteration}


def newton_schulz(
    x: jax.Array,
    coeffs,
    *,
    normalization: str = "frobenius",
    eps: float = 1e-7,
    compute_dtype=None,
    precision=None,
    method: str = AUTO,
    gram_restarts: Sequence[int] | None = None,
) -> jax.Array:
  r"""Approximately orthogonalises each matrix of ``x`` with Newton-Schulz.

  ``x`` is first divided by ``||x||_F + eps`` (the reference step); with
  ``normalization='schatten4'``, ``'aol'`` or ``'spectral'`` the first
  iteration further rescales by the Schatten-4 norm, by AOL row sums or by the
  largest singular value, reusing its Gram matrix.
  Matrices with more rows than columns are transposed so that the Gram matrix
  is the smaller one.

  Args:
    x: ``(..., m, n)`` array; leading axes are a batch.
    coeffs: ``(T, 3)`` or ``(3,)`` coefficients ``(a, b, c)``; one step per row.
    normalization: ``'frobenius'``, ``'schatten4'``, ``'aol'`` or ``'spectral'``.
    eps: Added to norms in denominators.
    compute_dtype: dtype of the iteration (default: ``x.dtype``); the
      normalisation is always accumulated in at least float32.
    precision: Passed to the matmuls (e.g. ``jax.lax.Precision.HIGHEST``).
    method: ``'standard'`` (iterate on ``X``), ``'gram'`` (iterate on
      ``X X^T`` and apply the product of the step polynomials once; the same
      map, fewer FLOPs when ``max(m, n) > 1.5 min(m, n)``; see `ns_flops`), or
      ``'auto'`` (the cheaper of the two in float32 or wider; standard below).
    gram_restarts: Step indices in ``[1, T - 1]`` before which the Gram form
      re-forms ``X`` from the accumulated polynomial (``X <- Q X``,
      ``R <- X X^T``): the same map in exact arithmetic, at ``4 m n^2`` FLOPs
      each, that keeps bf16 rounding errors from growing through ``Q`` and
      ``R``. None: `default_restarts` (``(2,)`` below float32 for ``T >= 3``,
      none otherwise). Ignored by the standard form.

  Returns:
    An array of ``x``'s shape and dtype.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Eq. 3-4.

    Zhang, Amsel, Chen and Dao, `Gram Newton-Schulz: A Fast, Hardware-Aware
    Newton-Schulz Algorithm for Muon
    <https://dao-ailab.github.io/blog/2026/gram-newton-schulz/>`_, 2026 (the
    Gram form and its restart).
  """
  if x.ndim < 2:
    raise ValueError(f"newton_schulz needs a (..., m, n) array, got shape {x.shape}")
  normalization_lib.validate_normalization(normalization)
  validation.at_least("eps", eps, 0.0)
  validation.float_dtype("compute_dtype", compute_dtype)
  validation.one_of("method", method, METHODS)
  rows = _coefficient_rows(coeffs)
  out_dtype = x.dtype
  dtype = compute_dtype or out_dtype
  if gram_restarts is None:
    gram_restarts = default_restarts(len(rows), dtype)
  restarts = _check_restarts(gram_restarts, len(rows))
  method = resolve_method(method, x.shape[-2], x.shape[-1], len(rows), dtype)
  transpose = x.shape[-2] > x.shape[-1]
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  x = frobenius_normalize(x, eps).astype(dtype)
  x = _ITERATIONS[method](x, rows, _FIRST_STEP_RESCALE[normalization], eps, precision, restarts)
  if transpose:
    x = jnp.swapaxes(x, -1, -2)
  return x.astype(out_dtype)
