"""Momentum for ROOT: the reference's sum-form (heavy-ball) trace.

The reference step keeps ``buf = mu * buf + g`` (no dampening) and, with
Nesterov, feeds ``g + mu * buf`` onward. `optax.trace` implements exactly
these semantics, so `trace` only adds ROOT's defaults and build-time checks.
"""

import jax
import jax.numpy as jnp
import optax

from root_optax._src import validation

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
  validation.in_range("decay", decay, 0.0, 1.0, high_open=True)
  if not isinstance(nesterov, bool):
    raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
  validation.float_dtype("accumulator_dtype", accumulator_dtype)
  return optax.trace(decay=decay, nesterov=nesterov, accumulator_dtype=accumulator_dtype)


def average_scale(decay: jax.typing.ArrayLike, nesterov: bool, step: jax.Array) -> jax.Array:
  """The factor that turns step ``step``'s sum-form momentum into an average.

  At step ``t`` (from 1), ``M_t = sum_k mu^k G_{t-k}`` weighs the gradients by
  ``(1 - mu^t) / (1 - mu)`` in total; optax Muon's bias-corrected EMA by 1.
  The factor is ``(1 - mu) / (1 - mu^t)``, and ``(1 - mu) / (1 - mu^(t+1))``
  for the Nesterov look-ahead ``G_t + mu M_t``: its ``M_t`` term then carries
  Muon's weight exactly, its ``G_t`` term Muon's to within ``mu^t``.
  """
  decay = jnp.asarray(decay, jnp.float32)
  t = jnp.asarray(step, jnp.float32) + (1.0 if nesterov else 0.0)
  # decay = 0: the momentum is the gradient, already an average.
  return jnp.where(decay > 0, (1 - decay) / (1 - decay ** t), 1.0)


def scale_to_average(decay: float = 0.95, nesterov: bool = True) -> optax.GradientTransformation:
  r"""Rescales updates made from the sum-form momentum to its average form.

  Only scale-dependent results need it: Newton-Schulz and the quantile clip
  are scale-invariant, but ``adaptive``'s dual norm ``<B, U>`` grows with the
  momentum, about ``1 / (1 - mu)`` times optax Muon's (20 at ``mu = 0.95``).
  Placed after it, this makes ``root(adaptive=True)`` step as optax Muon's
  ``adaptive=True`` (exactly without Nesterov; see `average_scale`).

  Args:
    decay: The momentum ``mu`` of `trace`, in [0, 1).
    nesterov: As `trace`'s.

  Returns:
    An `optax.GradientTransformation` (`optax.scale_by_schedule`, so its
    state counts the steps).
  """
  validation.in_range("decay", decay, 0.0, 1.0, high_open=True)
  if not isinstance(nesterov, bool):
    raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
  return optax.scale_by_schedule(lambda count: average_scale(decay, nesterov, count + 1))


def momentum_buffer(opt_state: optax.OptState) -> optax.Updates:
  """The ROOT branch's momentum ``M`` in a `root` state, a tree like the params.

  Where code written for optax Muon reads ``state[0]['muon'][0][0].mu``: in a
  `root` state the branch is ``state[0]['root']`` and its momentum a sum, not
  an average (`scale_to_average`). Leaves trained by AdamW are
  `optax.MaskedNode`; their moments are in ``state[0]['adam']``.

  Args:
    opt_state: The state of `root` (or of a chain or wrapper holding it, such
      as `optax.inject_hyperparams` or ``nnx.Optimizer(...).opt_state``).

  Returns:
    The `optax.TraceState` ``trace`` tree of `trace`.

  Raises:
    ValueError: When ``opt_state`` holds no `optax.TraceState` or more than one.
  """
  is_trace = lambda x: isinstance(x, optax.TraceState)
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=is_trace) if is_trace(s)]
  if len(found) != 1:
    raise ValueError(f"expected the state of one root() (one optax.TraceState), found {len(found)}")
  return found[0].trace
