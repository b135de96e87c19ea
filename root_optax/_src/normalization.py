"""How a matrix is normalised before Newton-Schulz: the names, and the one safe norm.

Newton-Schulz converges only for singular values in (0, 1], so each matrix is
first divided by a norm at least its spectral norm: Frobenius (the reference),
Schatten-4, AOL row sums or the spectral norm itself (`NORMALIZATIONS`).
optax Muon names the same choices ``preconditioning`` (`PRECONDITIONINGS`).
Frobenius and Schatten-4 divide every singular value by the same p-norm of
the spectrum (`schatten_p`), so only they can be calibrated from singular
values alone (`CALIBRATION_NORMALIZATIONS`).
"""

from typing import Optional

import jax
import jax.numpy as jnp

from root_optax._src import validation

NORMALIZATIONS = ("frobenius", "schatten4", "aol", "spectral")

# optax Muon's preconditioning names -> the Newton-Schulz normalisations.
PRECONDITIONINGS = {
    "frobenius": "frobenius",
    "schatten": "schatten4",
    "schatten4": "schatten4",
    "aol": "aol",
    "spectral": "spectral",
}

# The p of the Schatten p-norm each normalisation divides by: ||X||_F is the
# 2-norm of the singular values, ||X||_{S4} their 4-norm.
SCHATTEN_P = {"frobenius": 2.0, "schatten4": 4.0}

# Normalisations whose effect is a function of the singular values alone.
CALIBRATION_NORMALIZATIONS = tuple(SCHATTEN_P)


def validate_normalization(normalization: str) -> str:
  """Returns ``normalization`` if it is one of `NORMALIZATIONS`, else raises ValueError."""
  if normalization not in NORMALIZATIONS:
    raise ValueError(
        f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
  return normalization


def normalization_for(preconditioning: Optional[str]) -> Optional[str]:
  """The ``normalization`` of optax Muon's ``preconditioning`` name (None stays None)."""
  if preconditioning is None:
    return None
  validation.one_of("preconditioning", preconditioning, tuple(PRECONDITIONINGS))
  return PRECONDITIONINGS[preconditioning]


def schatten_p(normalization: str) -> float:
  """The p of the Schatten norm that ``normalization`` divides by.

  Args:
    normalization: One of `CALIBRATION_NORMALIZATIONS`.

  Returns:
    2.0 for ``'frobenius'``, 4.0 for ``'schatten4'``.

  Raises:
    ValueError: for any other normalisation.

  Example:
    >>> schatten_p("schatten4")
    4.0
  """
  validation.one_of("normalization", normalization, CALIBRATION_NORMALIZATIONS)
  return SCHATTEN_P[normalization]


def frobenius_norm(x: jax.Array, keepdims: bool = False) -> jax.Array:
  """``||x||_F`` over the last two axes, without overflow for huge entries.

  Computed as ``s * ||x / s||_F`` with ``s = max |x|``, in float32 or wider
  (float64 stays float64), so entries of 1e30 in float32 or bf16 do not
  overflow the sum of squares; a zero matrix has norm 0.
  """
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  top = jnp.max(jnp.abs(xf), axis=(-2, -1), keepdims=True)
  safe = jnp.where(top > 0, top, 1.0)
  norm = safe * jnp.sqrt(jnp.sum(jnp.square(xf / safe), axis=(-2, -1), keepdims=True))
  return norm if keepdims else norm[..., 0, 0]
