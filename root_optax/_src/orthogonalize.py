"""AdaNewton: shape-specialised, batched Newton-Schulz over a parameter tree."""

import logging
import os
import sys
import warnings
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from root_optax._src import calibration
from root_optax._src import calibration_cache
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import dimensions
from root_optax._src import newton_schulz as ns_lib
from root_optax._src import normalization as normalization_lib
from root_optax._src import polynomials
from root_optax._src import sharding as sharding_lib
from root_optax._src import stacking
from root_optax._src import validation

logger = logging.getLogger("root_optax")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # root_optax/


def _fits(coeffs, ns_steps: int) -> bool:
  """An entry fitted for ``ns_steps`` (or one triple, used at every step)."""
  return coeffs.shape[0] in (1, ns_steps)


def _user_stacklevel() -> int:
  """The `warnings.warn` stacklevel of the first caller outside JAX, Optax, Flax and us."""
  internal = tuple(os.path.dirname(m.__file__) + os.sep for m in (jax, optax)) + (_PACKAGE_DIR,)
  frame, level = sys._getframe(1), 1  # pylint: disable=protected-access
  while frame is not None and (frame.f_code.co_filename.startswith(internal)
                               or "/flax/" in frame.f_code.co_filename
                               or frame.f_code.co_filename.startswith("<")):
    frame, level = frame.f_back, level + 1
  return level


def _report(table: coefficients_lib.CoefficientTable, missing: list, fitted: list) -> None:
  """One warning naming every shape a fixed table lacks; one log line for calibrated ones."""
  names = lambda keys: ", ".join(f"{m}x{n}" for m, n in keys)
  if fitted and jax.process_index() == 0:
    logger.info("coefficients %r: calibrated Newton-Schulz coefficients for %s",
                table.name, names(fitted))
  if missing:
    if table.fallback == coefficients_lib.NEAREST:
      instead = "the entry of the nearest shape in the table"
    else:
      instead = "the table's default"
    warnings.warn(
        f"root_optax: coefficients {table.name!r} have no entry for shapes {names(missing)}; "
        f"using {instead}. coefficients='auto' calibrates every shape.",
        UserWarning, stacklevel=_user_stacklevel())


def _scale_by_dual_norm(x: jax.Array, u: jax.Array) -> jax.Array:
  """``<x, u> u`` per matrix, the inner product accumulated in float32."""
  dtype = jnp.promote_types(u.dtype, jnp.float32)
  inner = jnp.sum(x.astype(dtype) * u.astype(dtype), axis=(-2, -1), keepdims=True)
  return (inner * u.astype(dtype)).astype(u.dtype)


def ada_newton_orthogonalize(
    coefficients: coefficients_lib.CoefficientSpec = "auto",
    ns_steps: int = 5,
    normalization: Optional[str] = None,
    eps: float = 1e-7,
    compute_dtype=None,
    weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    *,
    precision=None,
    max_gain: float = polynomials.DEFAULT_MAX_GAIN,
    sharding: sharding_lib.ShardingSpec = None,
    cache_dir: calibration_cache.CacheDir = None,
    adaptive: bool = False,
    method: str = ns_lib.AUTO,
) -> optax.GradientTransformation:
  r"""Orthogonalises each matrix with Newton-Schulz, coefficients chosen by shape.

  Each matrix (transposed when tall) is normalised and iterated
  ``X <- a_t X + (b_t A + c_t A A) X``, ``A = X X^T``, for ``ns_steps`` steps,
  with ``(a_t, b_t, c_t)`` looked up by its ``(min, max)`` shape (AdaNewton,
  paper Sec. 4.2). Matrices of one shape and dtype are stacked and
  orthogonalised in one batched computation, so the compiled step holds one
  Newton-Schulz loop per distinct shape, not per leaf. With ``'auto'`` (the
  default) every shape gets its own per-iteration coefficients: the shipped
  ``'ada'`` entry, or a fit made when the shape is first traced (NumPy, ~1 s,
  outside the traced computation, cached in ``cache_dir``; one INFO log line
  on the ``'root_optax'`` logger names the shapes fitted). A fixed table
  (e.g. ``'paper'``) uses its fallback for shapes it lacks, with one warning
  per transform naming them all. Non-matrix leaves pass through unchanged.

  Args:
    coefficients: A preset name (``'auto'``; ``'ada'``: the shipped
      per-iteration Schatten-4 fits, nearest entry for other shapes;
      ``'paper'``: Table 1 of the paper, Muon's triple for other shapes;
      ``'reference'``: the authors' script, whose 2048x2048 triple sends a
      singular value of 0.559 to 3.31 after 5 steps and is flagged;
      ``'muon'``; ``'classic'``), a JSON/YAML path, a dict, one triple, a list
      of per-iteration triples, or a `CoefficientTable`.
    ns_steps: Newton-Schulz iterations, >= 1. A per-iteration entry with fewer
      triples repeats its last one; one with more is an error.
    normalization: ``'frobenius'`` (reference), ``'schatten4'``, ``'aol'``
      or ``'spectral'``; None uses the one the table was calibrated for.
      ``'auto'`` fits every shape for ``'frobenius'`` when asked (its
      shipped entries are Schatten-4 fits).
    eps: Added to the norm in ``X / (||X||_F + eps)``, >= 0.
    compute_dtype: dtype of the iteration (default: the update's dtype).
    weight_dimension_numbers: Which leaves are matrices and how to view
      higher-rank leaves; as `root`'s
      ``muon_weight_dimension_numbers``.
    precision: Matmul precision passed to `newton_schulz`.
    max_gain: Table entries whose composed polynomial exceeds this anywhere on
      [0, 1] are reported with a warning when the transform is built.
    sharding: None: XLA partitions each stacked group as it likes. A
      `jax.sharding.Mesh`, or ``'auto'`` (the mesh of the updates' shardings
      or of `jax.set_mesh`; none: the plain path): each group is split along
      its stack axis over all devices and orthogonalised whole matrix by
      whole matrix; see ``docs/sharding.md``.
    cache_dir: Where ``'auto'`` caches its fits: None (the directory of
      `set_calibration_cache_dir`, by default ``~/.cache/root_optax``), a
      path, or False (memory only). An unwritable directory is reported once
      in the log and the fits kept in memory.
    adaptive: Scale each orthogonalised matrix ``U`` by ``<X, U>``, with
      ``X`` the matrix it came from (its dual norm; Bernstein et al., 2024),
      as optax Muon's ``adaptive``.
    method: `newton_schulz`'s form: ``'auto'`` (in float32 or wider the
      Gram form where it needs fewer FLOPs, i.e. ``max(m, n) > 1.5 min(m, n)``;
      the standard form below float32), ``'standard'`` or ``'gram'`` (in
      bf16 with one restart).

  Returns:
    An `optax.GradientTransformation` with `optax.EmptyState`.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Sec. 4.2, Eq. 4.
  """
  table = coefficients_lib.load_coefficients(coefficients)
  validation.positive_int("ns_steps", ns_steps)
  normalization = normalization_lib.validate_normalization(normalization or table.normalization)
  validation.at_least("eps", eps, 0.0)
  validation.at_least("max_gain", max_gain, 1.0)
  validation.float_dtype("compute_dtype", compute_dtype)
  validation.matmul_precision("precision", precision)
  dimensions.validate_spec(weight_dimension_numbers)
  sharding_lib.validate_sharding(sharding)
  validation.boolean("adaptive", adaptive)
  validation.one_of("method", method, ns_lib.METHODS)
  calibrates = table.fallback == coefficients_lib.CALIBRATE
  # 'auto' with another normalization than its shipped entries': fit every shape.
  refit_all = calibrates and table.normalization != normalization
  if refit_all and normalization not in normalization_lib.CALIBRATION_NORMALIZATIONS:
    raise ValueError(
        f"coefficients {table.name!r} can be fitted for normalization "
        f"{normalization_lib.CALIBRATION_NORMALIZATIONS}, got normalization={normalization!r}; "
        "pass a fixed table (e.g. 'muon') or one of those")
  table.check_steps(ns_steps)
  coefficients_lib.warn_if_unsafe(table, ns_steps, max_gain, stacklevel=_user_stacklevel())
  resolved: dict = {}  # (min, max) -> (ns_steps, 3) coefficients, for this transform
  reported: list = [False]

  def resolve(keys):
    """Coefficients of each ``(min, max)`` key; missing shapes calibrated or reported once."""
    missing, fitted = [], []
    for key in keys:
      if key in resolved:
        continue
      coeffs, found = table.lookup(key)
      if calibrates and (refit_all or not (found and _fits(coeffs, ns_steps))):
        coeffs = calibration.coefficients_for_shape(
            key, ns_steps, cache_dir, normalization).coefficients
        fitted.append(key)
      elif not found and table.shapes:
        missing.append(key)
      resolved[key] = polynomials.steps_schedule(coeffs, ns_steps)
    if not reported[0] and (missing or fitted):
      reported[0] = True
      _report(table, missing, fitted)

  def orthogonalize(key, stack):
    out = ns_lib.newton_schulz(
        stack, resolved[key.shape], normalization=normalization, eps=eps,
        compute_dtype=compute_dtype, precision=precision, method=method)
    return _scale_by_dual_norm(stack, out) if adaptive else out

  def update_fn(updates, state, params=None):
    del params
    views = dimensions.matrix_leaves(updates, weight_dimension_numbers)
    mesh = sharding_lib.find_mesh(sharding, views.matrices)
    plan = stacking.plan(views.matrices, mesh, concatenate_distributed=True)
    resolve([key.shape for key in plan.keys])
    return views.rebuild(plan.map(orthogonalize)), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
