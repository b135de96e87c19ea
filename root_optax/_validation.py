"""Build-time checks of hyper-parameters, with errors that name the argument.

Values that are not concrete (tracers, e.g. under `optax.inject_hyperparams`
inside `jax.jit`) and schedules (callables) are not checked: there is no
value to check at build time.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np


def _concrete_number(name: str, value: Any) -> float | None:
  if isinstance(value, jax.core.Tracer) or callable(value):
    return None
  if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.ndarray, jax.Array)):
    raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  number = float(value)
  if not np.isfinite(number):
    raise ValueError(f"{name} must be finite, got {number}")
  return number


def in_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
             high_open: bool = False) -> None:
  """Raises ValueError unless ``low <= value <= high`` (ends optionally open)."""
  number = _concrete_number(name, value)
  if number is None:
    return
  below = number <= low if low_open else number < low
  above = number >= high if high_open else number > high
  if below or above:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {number}")


def at_least(name: str, value: Any, low: float) -> None:
  """Raises ValueError unless ``value >= low``."""
  number = _concrete_number(name, value)
  if number is not None and number < low:
    raise ValueError(f"{name} must be >= {low}, got {number}")


def positive_int(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is an int >= 1."""
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
  if value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value}")


def one_of(name: str, value: Any, allowed: tuple) -> None:
  """Raises ValueError unless ``value`` is one of ``allowed``."""
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
