"""Shape-dependent update scaling after orthogonalisation.

An orthogonalised ``m x n`` update has RMS ``1 / sqrt(max(m, n))``; the
reference multiplies it by ``0.2 sqrt(max(m, n))`` so its RMS matches AdamW's
(Moonlight, "consistent RMS" in optax). Keller Jordan's Muon instead uses
``sqrt(max(1, fan_out / fan_in))``.
"""

import math
from typing import Optional

import jax.numpy as jnp
import optax

from root_optax._src import dimensions
from root_optax._src import validation

RMS = "rms"
SPECTRAL = "spectral"
MODES = (RMS, SPECTRAL, None)


def shape_scale(fan_in: int, fan_out: int, mode: Optional[str], rms: float = 0.2) -> float:
  """The factor `scale_by_shape` applies to a ``fan_in x fan_out`` matrix."""
  if mode == RMS:
    return rms * math.sqrt(max(fan_in, fan_out))
  if mode == SPECTRAL:
    return math.sqrt(max(1.0, fan_out / fan_in))
  return 1.0


def scale_by_shape(
    mode: Optional[str] = RMS,
    rms: float = 0.2,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
) -> optax.GradientTransformation:
  r"""Scales each matrix update by a factor of its shape.

  ``'rms'``: ``rms * sqrt(max(fan_in, fan_out))`` (the reference's Moonlight
  matching, optax's ``consistent_rms``); ``'spectral'``:
  ``sqrt(max(1, fan_out / fan_in))`` (optax Muon's default); None: 1. For a
  higher-rank leaf, ``fan_in`` and ``fan_out`` are the sizes of its matrix
  view. Non-matrix leaves pass through unchanged.

  Args:
    mode: ``'rms'``, ``'spectral'`` or None.
    rms: The target RMS for ``'rms'``, > 0 (0.2 matches AdamW).
    weight_dimension_numbers: As `root`'s ``muon_weight_dimension_numbers``.

  Returns:
    An `optax.GradientTransformation` with `optax.EmptyState`.

  References:
    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025, Sec. 2.2.
  """
  validation.one_of("mode", mode, MODES)
  validation.in_range("rms", rms, 0.0, math.inf, low_open=True)
  dimensions.validate_spec(weight_dimension_numbers)

  def scale(mats):
    return [m * jnp.asarray(shape_scale(*m.shape[-2:], mode, rms), m.dtype) for m in mats]

  def update_fn(updates, state, params=None):
    del params
    return dimensions.map_matrices(scale, updates, weight_dimension_numbers), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
