"""Calibration of shape-specific Newton-Schulz coefficients (AdaNewton, Eq. 4).

Newton-Schulz acts on each normalised singular value ``s`` of its input through
the scalar map ``g^(T)(s) = g_T(...g_1(s))`` with ``g_t(x) = a_t x + b_t x^3 +
c_t x^5`` (paper Eq. 3). So fitting coefficients needs no matrix iteration:
only the singular values. `calibrate` minimises the paper's Eq. 4 objective

    mean over s of (g^(T)(s) - 1)^2

over the normalised spectra of a matrix shape (Gaussian matrices of that shape,
recorded momenta, or a mix; paper Sec. 4.5) by Levenberg-Marquardt in NumPy
(or, on request, ``jax.grad`` and an optax optimiser), one triple for all steps
(the paper) or one per step (Polar Express). A fitted set is accepted only if it is *safe*: its
composed polynomial keeps every input of [0, 1] inside the band
``[0, max_gain]`` after T steps (`check_safety`), so no spectrum, fitted or
not, can blow up. Results are cached in memory (`clear_cache`) and optionally
on disk (``cache_dir``), keyed by the shape and its `CalibrationSettings`.
The spectra (`SpectrumRecorder`) live in `root_optax.spectra`, the polynomial
maths (`check_safety`) in `root_optax.polynomials`; both are re-exported here.
"""

import dataclasses
import hashlib
import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import optax

from root_optax import _fit
from root_optax import _validation
from root_optax import coefficients as coefficients_lib
from root_optax import polynomials
from root_optax import spectra as spectra_lib

# Used here and re-exported (their public home was here).
from root_optax.polynomials import SafetyReport, check_safety
from root_optax.spectra import (  # pylint: disable=unused-import
    CALIBRATION_NORMALIZATIONS, SpectrumRecorder, gaussian_spectra, matrix_singular_values,
    normalized_spectrum, orthogonalization_error)

ShapeKey = coefficients_lib.ShapeKey
logger = logging.getLogger("root_optax")
# Paper Sec. 4.5: "Mixed (1:3)", real : random spectra, is the published choice.
PAPER_REAL_FRACTION = 0.25
# How far below max_gain the fit aims, so that the final dense check passes.
_BAND_MARGIN = 0.05


@dataclasses.dataclass(frozen=True)
class CalibrationSettings:
  """Everything a fit depends on besides the shape and the real spectra.

  Validated when built. Its fields, in this order, are the keywords of
  `calibrate` and `calibrate_shape` (documented in `calibrate`), key their
  cache and name the ``source`` of the table `calibrate` returns.
  """

  ns_steps: int = 5
  per_iteration: bool = True
  normalization: str = "schatten4"
  real_fraction: float = PAPER_REAL_FRACTION
  prior_fraction: float = 0.0
  prior_min: float = 1e-3
  seed: int = 0
  num_values: int = 4096
  max_sample_dim: int = 512
  max_gain: float = polynomials.DEFAULT_MAX_GAIN
  num_steps: int = 100

  def __post_init__(self):
    _validation.positive_int("ns_steps", self.ns_steps)
    _validation.one_of("normalization", self.normalization, CALIBRATION_NORMALIZATIONS)
    _validation.in_range("real_fraction", self.real_fraction, 0.0, 1.0)
    _validation.at_least("max_gain", self.max_gain, 1.0 + _BAND_MARGIN)
    _validation.positive_int("num_values", self.num_values)
    _validation.positive_int("num_steps", self.num_steps)
    _validation.in_range("prior_fraction", self.prior_fraction, 0.0, 1.0, high_open=True)
    _validation.in_range("prior_min", self.prior_min, 0.0, 1.0, low_open=True, high_open=True)

  @property
  def band(self) -> float:
    """The upper end of the band the fit keeps ``g^(T)`` in on [0, 1]."""
    return self.max_gain - _BAND_MARGIN

  @property
  def source(self) -> str:
    """How a table fitted with these settings was made."""
    return (f"root_optax.calibrate: {'per-iteration' if self.per_iteration else 'one triple'}, "
            f"T={self.ns_steps}, {self.normalization}, seed {self.seed}, real fraction "
            f"{self.real_fraction}, log-uniform prior {self.prior_fraction} on "
            f"[{self.prior_min}, 1], safety band [0, {self.max_gain}]")

  def without_real(self) -> "CalibrationSettings":
    """These settings for a shape without real spectra (its fit is the same for any share)."""
    return dataclasses.replace(self, real_fraction=0.0)

  def cache_key(self, key: ShapeKey, real: Optional[np.ndarray]) -> str:
    """A digest of the shape, these settings and the real spectra (the cache file's name)."""
    digest = hashlib.sha1(json.dumps([list(key), dataclasses.asdict(self)], sort_keys=True).encode())
    if real is not None:
      digest.update(np.ascontiguousarray(real).tobytes())
    return digest.hexdigest()


def _settings_keywords(fn):
  """Shows the `CalibrationSettings` fields, which ``fn`` takes as ``**keywords``, in its signature."""
  signature = inspect.signature(fn)
  own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
  fields = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                              annotation=f.type) for f in dataclasses.fields(CalibrationSettings)]
  fn.__signature__ = signature.replace(parameters=own + fields)
  return fn


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
  """Coefficients fitted for one shape.

  Attributes:
    shape: ``(min, max)``.
    coefficients: ``(T, 3)`` (per iteration) or ``(1, 3)``.
    loss: Eq. 4 objective on the calibration spectra (no penalty).
    safety: The `SafetyReport` of ``coefficients``.
    start: Name of the initialisation the chosen set came from.
    seconds: Wall time of the fit (0 when served from a cache).
  """

  shape: ShapeKey
  coefficients: np.ndarray
  loss: float
  safety: SafetyReport
  start: str
  seconds: float


_CACHE: dict = {}


def clear_cache() -> None:
  """Forgets every result `calibrate` has cached in memory.

  Compiled fitting programs of a custom ``optimizer`` (a few, keyed by the
  optimiser and ``num_steps``) stay in JAX's compilation cache;
  `jax.clear_caches` drops them.
  """
  _CACHE.clear()


def _weighted_values(gauss: np.ndarray, real: Optional[np.ndarray], real_fraction: float,
                     prior: Optional[np.ndarray] = None, prior_fraction: float = 0.0):
  """Concatenated values and weights summing to 1.

  ``prior`` gets ``prior_fraction``; the rest is split between ``real``
  (``real_fraction``) and ``gauss``.
  """
  if real is None or real_fraction == 0.0:
    parts = [(gauss, 1.0)]
  elif real_fraction == 1.0:
    parts = [(real, 1.0)]
  else:
    parts = [(gauss, 1.0 - real_fraction), (real, real_fraction)]
  if prior is not None and prior_fraction > 0.0:
    parts = [(v, share * (1.0 - prior_fraction)) for v, share in parts]
    parts.append((prior, prior_fraction))
  parts = [(v, share) for v, share in parts if share > 0.0]
  x = np.concatenate([v for v, _ in parts])
  w = np.concatenate([np.full(v.size, share / v.size) for v, share in parts])
  return x, w


def _read_disk_cache(cache_dir, digest, key):
  path = os.path.join(cache_dir, f"{digest}.json")
  try:
    with open(path) as f:
      d = json.load(f)
    c = polynomials.as_coefficient_array(d["coefficients"])
  except (OSError, ValueError, KeyError):
    return None  # missing, unreadable or half-written by another process: fit again
  return CalibrationResult(key, c, d["loss"], check_safety(c, d["ns_steps"], d["max_gain"]),
                           d["start"], 0.0)


_UNWRITABLE: set = set()


def _write_disk_cache(cache_dir, digest, result: CalibrationResult,
                      settings: CalibrationSettings):
  """Writes atomically (a process reading it sees all or nothing); a directory
  that cannot be written is reported once and the result kept in memory."""
  d = {"coefficients": result.coefficients.tolist(), "loss": result.loss, "start": result.start,
       "ns_steps": settings.ns_steps, "max_gain": settings.max_gain,
       "settings": dataclasses.asdict(settings)}
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f".{digest}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
      json.dump(d, f)
    os.replace(tmp, os.path.join(cache_dir, f"{digest}.json"))
  except OSError as e:
    if cache_dir not in _UNWRITABLE:
      _UNWRITABLE.add(cache_dir)
      logger.info("calibration cache %s is not writable (%s); keeping "
                  "calibrated coefficients in memory only", cache_dir, e.strerror or e)


def _fit_shape(key: ShapeKey, settings: CalibrationSettings, real: Optional[np.ndarray],
               optimizer: Optional[optax.GradientTransformation]) -> CalibrationResult:
  """Fits ``key`` to its mix of spectra; the best safe candidate wins."""
  start = time.perf_counter()
  s = settings
  gauss = gaussian_spectra(key, num_values=s.num_values, seed=s.seed,
                           normalization=s.normalization, max_sample_dim=s.max_sample_dim)
  prior = np.geomspace(s.prior_min, 1.0, s.num_values) if s.prior_fraction > 0.0 else None
  x, w = _weighted_values(gauss, real, s.real_fraction, prior, s.prior_fraction)
  inits = _fit.initial_sets(s.ns_steps, s.per_iteration,
                            key if s.normalization == "schatten4" else None)
  name, loss, coeffs, safety = _fit.best_safe_fit(
      inits, x, w, ns_steps=s.ns_steps, band=s.band, max_gain=s.max_gain,
      per_iteration=s.per_iteration, num_steps=s.num_steps, optimizer=optimizer)
  return CalibrationResult(key, coeffs, loss, safety, name, time.perf_counter() - start)


def _calibrate_shape(key: ShapeKey, settings: CalibrationSettings, spectra: Any,
                     optimizer: Optional[optax.GradientTransformation], cache: bool,
                     cache_dir: Optional[str]) -> CalibrationResult:
  """`calibrate_shape` for a ``(min, max)`` key and validated settings."""
  real = spectra_lib.recorded_values(spectra, key, normalization=settings.normalization,
                                     num_values=settings.num_values, seed=settings.seed)
  if real is None:
    settings = settings.without_real()
  use_cache = cache and optimizer is None  # a custom optimiser has no stable identity
  digest = settings.cache_key(key, real)
  if use_cache and digest in _CACHE:
    return dataclasses.replace(_CACHE[digest], seconds=0.0)
  if use_cache and cache_dir and (hit := _read_disk_cache(cache_dir, digest, key)):
    _CACHE[digest] = hit
    return hit
  result = _fit_shape(key, settings, real, optimizer)
  if use_cache:
    _CACHE[digest] = result
    if cache_dir:
      _write_disk_cache(cache_dir, digest, result, settings)
  return result


@_settings_keywords
def calibrate_shape(
    shape: Sequence[int] | str,
    *,
    spectra: Any = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    cache: bool = True,
    cache_dir: Optional[str] = None,
    **keywords,
) -> CalibrationResult:
  """Fits Newton-Schulz coefficients for one matrix shape; see `calibrate`.

  Takes the keywords of `calibrate` but ``name``, ``default``, ``fallback``
  and ``progress``: ``spectra``, ``optimizer``, ``cache``, ``cache_dir`` and
  the `CalibrationSettings` fields.

  Returns:
    A `CalibrationResult`.
  """
  settings = CalibrationSettings(**keywords)
  return _calibrate_shape(coefficients_lib.shape_key(shape), settings, spectra, optimizer, cache,
                          cache_dir)


@_settings_keywords
def calibrate(
    shapes: Sequence[Sequence[int] | str],
    *,
    spectra: Any = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    cache: bool = True,
    cache_dir: Optional[str] = None,
    name: str = "calibrated",
    default: Any = coefficients_lib.MUON_COEFFICIENTS,
    fallback: str = coefficients_lib.NEAREST,
    progress: Optional[Callable[[CalibrationResult], None]] = None,
    **keywords,
) -> coefficients_lib.CoefficientTable:
  r"""Learns Newton-Schulz coefficients per matrix shape (AdaNewton calibration).

  For each shape, minimises the paper's Eq. 4 objective
  ``mean_s (g^(T)(s) - 1)^2`` over normalised singular values ``s`` (Gaussian
  matrices of the shape, mixed with recorded real spectra at
  ``real_fraction``) by Levenberg-Marquardt (or ``optimizer``), starting from
  the Polar Express coefficients and the nearest shipped ``'ada'`` entry
  (Schatten-4), or from Muon's, the paper's, the classic and the Polar Express
  coefficients (Frobenius), plus a penalty
  that keeps the composed polynomial in ``[0, max_gain - 0.05]`` on [0, 1].
  The best *safe* set (`check_safety`) is kept; the starting sets are
  candidates too, so the result is never worse than Muon's triple on the
  calibration spectra. Deterministic given ``seed``; results are cached.

  Args:
    shapes: Matrix shapes, ``(rows, cols)`` or ``'768x3072'``; orientation is
      irrelevant (keys are ``(min, max)``).
    ns_steps: Newton-Schulz steps T the coefficients are fitted for.
    per_iteration: One triple per step (default) or one for all steps (paper).
    normalization: ``'schatten4'`` (default; ~5x lower error on square
      shapes) or ``'frobenius'`` (the paper's). Stored in the table, and used
      by `ada_newton_orthogonalize` when its ``normalization`` is None.
    spectra: Real spectra: a `SpectrumRecorder` or ``{shape: [singular values
      of one matrix, ...]}``. Shapes without any use Gaussian spectra only.
    real_fraction: Share of the objective on real spectra (paper: 1:3, 0.25).
    prior_fraction: Share of the objective on a log-uniform spectrum over
      ``[prior_min, 1]``, in [0, 1): a stand-in for heavy-tailed real momenta
      when none are recorded (Gaussian spectra alone give coefficients that
      do not lift small singular values; see docs/calibration.md).
    prior_min: Lower end of that spectrum, in (0, 1).
    seed: Seed of the Gaussian matrices.
    num_values: At least this many Gaussian singular values per shape.
    max_sample_dim: Larger shapes are sampled at this size and rescaled
      (`gaussian_spectra`).
    max_gain: Upper end of the safety band, > 1.05.
    num_steps: Iterations of the fit (at most; Levenberg-Marquardt stops
      when it converges).
    optimizer: None (Levenberg-Marquardt in float64 NumPy: no compilation,
      the same digits in every process) or an optax optimiser run under
      ``jax.grad`` (e.g. ``optax.lbfgs()``), called with ``value``, ``grad``
      and ``value_fn`` extra arguments; results with a custom optimiser are
      not cached.
    cache: Reuse results for identical settings (in memory; `clear_cache`).
    cache_dir: Also store results as JSON files in this directory.
    name: Name of the returned table.
    default: Coefficients of the table for shapes it does not hold.
    fallback: The table's rule for unknown shapes (`CoefficientTable`).
    progress: Called with each `CalibrationResult` as it is done.

  Returns:
    A `CoefficientTable` with one entry per shape.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Eq. 4 and Sec. 4.5;
    Amsel et al., `The Polar Express <https://arxiv.org/abs/2505.16932>`_, 2025.
  """
  settings = CalibrationSettings(**keywords)
  if spectra is None:
    settings = settings.without_real()
  fitted = {}
  for shape in shapes:
    result = _calibrate_shape(coefficients_lib.shape_key(shape), settings, spectra, optimizer,
                              cache, cache_dir)
    fitted[result.shape] = result.coefficients
    if progress is not None:
      progress(result)
  return coefficients_lib.CoefficientTable(
      name=name, default=default, shapes=fitted, normalization=settings.normalization,
      source=settings.source, fallback=fallback)
