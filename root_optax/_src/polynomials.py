"""The quintic Newton-Schulz polynomials, their composition and its safety.

Newton-Schulz maps each normalised singular value ``s`` of its input through
``g_t(s) = a_t s + b_t s^3 + c_t s^5`` at step t, so T steps act as the
composed polynomial ``g^(T) = g_T o ... o g_1`` (paper Eq. 3); the ideal is
``g^(T)(s) = 1`` for every ``s > 0``. Coefficients are ``(T, 3)`` arrays of
rows ``(a_t, b_t, c_t)``; one row is used at every step. Normalised singular
values lie in [0, 1], so the range of ``g^(T)`` there bounds what T steps can
do to any input.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from root_optax._src import validation

# A composed polynomial whose maximum over [0, 1] exceeds this is flagged:
# Muon's own triple peaks at 1.20, the authors' 2048x2048 triple at 3.31.
DEFAULT_MAX_GAIN = 1.5
# Where `polynomial_envelope` starts its minimum: g^(T)(0) = 0 for every set.
_MIN_INPUT = 0.01
_NUM_POINTS = 200_001
# `composed_polynomial` reports a value whose magnitude passes this at any step
# as diverged (+-inf): one more quintic step of it, ~c x^5, is within float64's
# range (1.8e308) for any |c| < 1e150, two are not.
_DIVERGED = 1e30


def as_coefficient_array(value: Any, where: str = "coefficients") -> np.ndarray:
  """Validates coefficients and returns them as a ``(T, 3)`` float64 array.

  Args:
    value: One triple ``(a, b, c)`` or a list of per-iteration triples.
    where: How error messages name ``value``.

  Returns:
    The ``(T, 3)`` array (one triple becomes ``(1, 3)``).

  Raises:
    ValueError: if ``value`` is not numbers, not of shape ``(3,)`` or
      ``(T, 3)`` with ``T >= 1``, or not finite.
  """
  where = validation.shown(where)
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where} must be numbers (a, b, c) or a list of them, got {value!r}") from e
  if arr.ndim == 1:
    arr = arr[None, :]
  if arr.ndim != 2 or arr.shape[-1] != 3 or arr.shape[0] < 1:
    raise ValueError(
        f"{where} must have shape (3,) or (T, 3) with T >= 1, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{where} must be finite, got {arr.tolist()}")
  return arr


def steps_schedule(coeffs: Any, ns_steps: int, where: str = "coefficients") -> np.ndarray:
  """Expands ``(T, 3)`` coefficients to exactly ``ns_steps`` rows.

  A single triple is used at every step; a per-iteration list shorter than
  ``ns_steps`` repeats its last triple; a longer one is an error (truncating a
  schedule fitted for T steps would drop its converging tail).
  """
  validation.positive_int("ns_steps", ns_steps)
  where = validation.shown(where)
  coeffs = as_coefficient_array(coeffs, where)
  if coeffs.shape[0] > ns_steps:
    raise ValueError(
        f"{where} has {coeffs.shape[0]} per-iteration triples but ns_steps="
        f"{ns_steps}; set ns_steps >= {coeffs.shape[0]}")
  pad = np.repeat(coeffs[-1:], ns_steps - coeffs.shape[0], axis=0)
  return np.concatenate([coeffs, pad], axis=0)


def quintic(x, a, b, c):
  """``g(x) = a x + b x^3 + c x^5`` in Horner form, for NumPy or JAX values."""
  x2 = x * x
  return x * (a + x2 * (b + c * x2))


def compose(schedule, x):
  """``g_T(...g_1(x))`` for a ``(T, 3)`` schedule, one row a step.

  Plain arithmetic on NumPy or JAX arrays alike, so the fit differentiates it
  with ``jax.grad`` and the checks evaluate it in float64 NumPy.
  """
  for t in range(schedule.shape[0]):
    x = quintic(x, schedule[t, 0], schedule[t, 1], schedule[t, 2])
  return x


def composed_polynomial(coeffs: Any, x: Any, ns_steps: int) -> np.ndarray:
  """Applies ``g_T(...g_1(x))`` to scalars ``x`` (the singular-value map).

  With ``g_t(s) = a_t s + b_t s^3 + c_t s^5``, the Newton-Schulz iteration maps
  each normalised singular value ``s`` of the input to ``g_T(...g_1(s))``
  (paper Eq. 3); the ideal is 1 for every ``s > 0``.

  Args:
    coeffs: ``(3,)`` or ``(T, 3)`` coefficients (see `steps_schedule`).
    x: Inputs, any shape.
    ns_steps: Newton-Schulz steps T.

  Returns:
    ``g^(T)(x)`` in float64; ``+-inf`` where the iterate's magnitude exceeded
    1e30 at some step (diverged; computed without overflowing).
  """
  schedule = steps_schedule(coeffs, ns_steps)
  y = np.asarray(x, dtype=np.float64)
  diverged = np.abs(y) > _DIVERGED
  sign = np.sign(y)
  for a, b, c in schedule:
    y = quintic(np.where(diverged, 0.0, y), a, b, c)
    newly = ~diverged & (np.abs(y) > _DIVERGED)
    sign = np.where(newly, np.sign(y), sign)
    diverged = diverged | newly
  return np.where(diverged, np.copysign(np.inf, sign), y)[()]


@dataclasses.dataclass(frozen=True)
class Envelope:
  """Range of the composed polynomial on the unit interval."""

  max_value: float
  argmax: float
  min_value: float  # over [min_input, 1]
  min_input: float


def _on_unit_interval(coeffs, ns_steps, num_points, min_input) -> tuple[Envelope, np.ndarray]:
  """The `Envelope` of ``g^(T)`` and its values on a uniform grid of [0, 1]."""
  validation.positive_int("num_points", num_points)
  if num_points < 2:
    raise ValueError(f"num_points must be >= 2, got {num_points}")
  validation.in_range("min_input", min_input, 0.0, 1.0)
  x = np.linspace(0.0, 1.0, num_points)
  y = composed_polynomial(coeffs, x, ns_steps)
  magnitude = np.abs(y)
  i = int(np.argmax(magnitude))
  lo = x >= min_input
  return Envelope(float(magnitude[i]), float(x[i]), float(magnitude[lo].min()), min_input), y


def polynomial_envelope(
    coeffs: Any, ns_steps: int, num_points: int = _NUM_POINTS, min_input: float = _MIN_INPUT,
) -> Envelope:
  """Max of ``|g^(T)|`` over [0, 1] and its min over ``[min_input, 1]``.

  A normalised singular value lies in [0, 1] (Frobenius and Schatten-4
  normalisation both guarantee it), so this bounds what T steps can do to any
  input spectrum, not only the one the coefficients were fitted on.

  Args:
    coeffs: ``(3,)`` or ``(T, 3)`` coefficients.
    ns_steps: Newton-Schulz steps T.
    num_points: Size of the uniform grid on [0, 1], >= 2.
    min_input: Lower end of the interval of the minimum, in [0, 1].

  Returns:
    An `Envelope`.
  """
  return _on_unit_interval(coeffs, ns_steps, num_points, min_input)[0]


@dataclasses.dataclass(frozen=True)
class SafetyReport:
  """Whether ``0 <= g^(T)(x) <= max_gain`` for every x in [0, 1].

  Attributes:
    safe: The verdict.
    envelope: `polynomial_envelope` (max of ``|g^(T)|`` on [0, 1]).
    min_signed: The minimum of ``g^(T)`` on the same grid (a negative value
      flips the sign of a singular direction).
    max_gain: The upper end of the band.
  """

  safe: bool
  envelope: Envelope
  min_signed: float
  max_gain: float


def check_safety(coeffs: Any, ns_steps: int = 5, max_gain: float = DEFAULT_MAX_GAIN,
                 num_points: int = _NUM_POINTS) -> SafetyReport:
  """Checks that T steps keep every normalised singular value in ``[0, max_gain]``.

  The normalised singular values of any input lie in [0, 1] (Frobenius and
  Schatten-4 normalisation both guarantee it), so a set that passes cannot
  amplify any direction of any matrix more than ``max_gain`` times the ideal
  1, whatever its spectrum. Checked on a uniform grid of ``num_points``.

  Args:
    coeffs: ``(3,)`` or ``(T, 3)`` coefficients.
    ns_steps: Newton-Schulz steps; a shorter per-iteration list repeats its last triple.
    max_gain: Upper end of the band (default 1.5: Muon peaks at 1.20, the
      authors' 2048x2048 triple at 3.31).
    num_points: Grid size.

  Returns:
    A `SafetyReport`.
  """
  validation.at_least("max_gain", max_gain, 1.0)
  env, y = _on_unit_interval(coeffs, ns_steps, num_points, _MIN_INPUT)
  min_signed = float(np.min(y))
  safe = math.isfinite(env.max_value) and env.max_value <= max_gain and min_signed >= 0.0
  return SafetyReport(bool(safe), env, min_signed, float(max_gain))
