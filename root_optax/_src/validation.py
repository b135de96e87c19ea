"""Build-time checks of hyper-parameters, with errors that name the argument.

Values that are not concrete (tracers, e.g. under `optax.inject_hyperparams`
inside `jax.jit`) and schedules (callables) are not checked: there is no
value to check at build time.
"""

import contextvars
import functools
import numbers
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

T = TypeVar("T")
# An argument's name -> the name its caller gives it, while `renamed` builds.
_CALLER_NAMES: contextvars.ContextVar[dict] = contextvars.ContextVar("caller_names", default={})


def renamed(build: Callable[..., T], **names: str) -> Callable[..., T]:
  """``build``, with its errors naming its arguments by its caller's names.

  `root()` builds each inner transform through one, e.g.
  ``renamed(trace, decay="beta")``, so that a bad ``beta`` is reported as
  ``beta``, not as `trace`'s ``decay``.

  Args:
    build: A function whose arguments are checked with this module's checks.
    **names: ``build``'s argument name -> the caller's name for it.

  Returns:
    A function that calls ``build`` with the same arguments.
  """
  @functools.wraps(build)
  def build_renamed(*args, **kwargs):
    token = _CALLER_NAMES.set({**_CALLER_NAMES.get(), **names})
    try:
      return build(*args, **kwargs)
    finally:
      _CALLER_NAMES.reset(token)
  return build_renamed


def shown(name: str) -> str:
  """The name an error gives the argument ``name`` (see `renamed`)."""
  return _CALLER_NAMES.get().get(name, name)


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
  name = shown(name)
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
  name = shown(name)
  number = _concrete_number(name, value)
  if number is not None and number < low:
    raise ValueError(f"{name} must be >= {low}, got {number}")


def positive_int(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a Python int >= 1 (it sets a loop length)."""
  name = shown(name)
  if isinstance(value, (jax.Array, np.ndarray)):
    raise TypeError(
        f"{name} must be a static Python int >= 1, got an array {value!r}; with "
        f"optax.inject_hyperparams pass static_args=({name!r},)")
  if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
    raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})")
  if value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value}")


def one_of(name: str, value: Any, allowed: tuple) -> None:
  """Raises ValueError unless ``value`` is one of ``allowed``."""
  name = shown(name)
  if value not in allowed:
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def non_negative_values(name: str, value: Any) -> None:
  """Raises ValueError if a Python or NumPy ``value`` has an entry < 0 or NaN.

  JAX arrays are not inspected: reading them would force a device sync in
  eager code, and inside `jax.jit` they are tracers.
  """
  name = shown(name)
  if isinstance(value, jax.Array) or not isinstance(value, (numbers.Real, np.ndarray, np.generic)):
    return
  arr = np.asarray(value, dtype=np.float64)
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(f"{name} must be >= 0 (and not NaN), got {value!r}")


def boolean(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is a bool."""
  name = shown(name)
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {value!r} ({type(value).__name__})")


def float_dtype(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is None or a real floating-point dtype."""
  name = shown(name)
  if value is None:
    return
  try:
    dtype = jnp.dtype(value)
  except TypeError as e:
    raise TypeError(f"{name} must be None or a floating dtype such as jnp.bfloat16, got {value!r}") from e
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{name} must be None or a real floating dtype (float16, bfloat16, float32, "
                    f"float64), got {dtype.name}")


def matmul_precision(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a precision `jnp.matmul` accepts."""
  name = shown(name)
  if value is None:
    return
  x = jax.ShapeDtypeStruct((2, 2), jnp.float32)
  try:
    jax.eval_shape(lambda a: jnp.matmul(a, a, precision=value), x)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a precision jnp.matmul accepts, got {value!r}: {e}") from e


def bool_tree(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is None, a callable or a tree of bools."""
  name = shown(name)
  if value is None or callable(value):
    return
  for leaf in jax.tree.leaves(value):
    if not isinstance(leaf, (bool, np.bool_)) and not (
        isinstance(leaf, (np.ndarray, jax.Array)) and leaf.dtype == np.bool_ and leaf.ndim == 0):
      raise TypeError(
          f"{name} must be None, a callable or a tree of bools like the params, "
          f"found a leaf {leaf!r} ({type(leaf).__name__})")
