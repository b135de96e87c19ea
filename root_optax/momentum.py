"""Momentum for ROOT: the reference's sum-form (heavy-ball) trace.

The reference step keeps ``buf = mu * buf + g`` (no dampening) and, with
Nesterov, feeds ``g + mu * buf`` onward. `optax.trace` implements exactly
these semantics, so `trace` only adds ROOT's defaults and build-time checks.
"""

import optax

from root_optax import _validation

TraceState = optax.TraceState


def trace(
    decay: float = 0.95,
    nesterov: bool = True,
    accumulator_dtype=None,
) -> optax.GradientTransformation:
  r"""Sum-form momentum ``M_t = mu M_{t-1} + G_t`` (ROOT Algorithm 1).

  Output is ``M_t``, or ``G_t + mu M_t`` with ``nesterov=True`` (the
  reference script's default). This is `optax.trace` with ROOT's defaults;
  its state is `optax.TraceState`, so checkpoints interoperate.

  Args:
    decay: The momentum ``mu`` in [0, 1).
    nesterov: Whether to return the Nesterov look-ahead ``G_t + mu M_t``.
    accumulator_dtype: dtype of the buffer (e.g. ``jnp.bfloat16`` to halve
      its memory, optax's ``mu_dtype``); None keeps the parameter dtype.

  Returns:
    An `optax.GradientTransformation` whose state is `optax.TraceState`.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Algorithm 1.
  """
  _validation.in_range("decay", decay, 0.0, 1.0, high_open=True)
  if not isinstance(nesterov, bool):
    raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
  _validation.float_dtype("accumulator_dtype", accumulator_dtype)
  return optax.trace(decay=decay, nesterov=nesterov, accumulator_dtype=accumulator_dtype)
