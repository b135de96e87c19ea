"""Calibration of shape-specific Newton-Schulz coefficients (AdaNewton, Eq. 4).

Newton-Schulz maps each normalised singular value ``s`` of its input through
the composed quintic ``g^(T)(s)`` (paper Eq. 3), so fitting coefficients needs
only singular values, no matrix iteration. `calibrate` minimises the paper's
Eq. 4 objective, ``mean over s of (g^(T)(s) - 1)^2``, over the spectra of a
matrix shape (``spectra.py``: Gaussian, recorded, or a mix; paper Sec. 4.5) by
Levenberg-Marquardt in NumPy, or ``jax.grad`` and an optax optimiser
(``fitting.py``), and accepts only a *safe* set: one whose composed polynomial
keeps [0, 1] inside ``[0, max_gain]`` (`check_safety`). Results are cached by
shape and `CalibrationSettings` (``calibration_cache.py``).
"""

import dataclasses
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import numpy as np
import optax

from root_optax._src import calibration_cache
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import fitting
from root_optax._src import normalization as normalization_lib
from root_optax._src import polynomials
from root_optax._src import spectra as spectra_lib
from root_optax._src import validation

ShapeKey = coefficients_lib.ShapeKey
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
    validation.positive_int("ns_steps", self.ns_steps)
    validation.one_of("normalization", self.normalization,
                      normalization_lib.CALIBRATION_NORMALIZATIONS)
    validation.in_range("real_fraction", self.real_fraction, 0.0, 1.0)
    validation.at_least("max_gain", self.max_gain, 1.0 + _BAND_MARGIN)
    validation.positive_int("num_values", self.num_values)
    validation.positive_int("num_steps", self.num_steps)
    validation.in_range("prior_fraction", self.prior_fraction, 0.0, 1.0, high_open=True)
    validation.in_range("prior_min", self.prior_min, 0.0, 1.0, low_open=True, high_open=True)

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
  safety: polynomials.SafetyReport
  start: str
  seconds: float

  def to_record(self, settings: CalibrationSettings) -> dict:
    """What the disk cache stores of this result, fitted with ``settings``."""
    return {"coefficients": self.coefficients.tolist(), "loss": self.loss, "start": self.start,
            "ns_steps": settings.ns_steps, "max_gain": settings.max_gain,
            "settings": dataclasses.asdict(settings)}

  @classmethod
  def from_record(cls, key: ShapeKey, record: dict) -> "CalibrationResult":
    """The result `to_record` stored, for shape ``key`` (its safety checked again)."""
    c = record["coefficients"]
    safety = polynomials.check_safety(c, record["ns_steps"], record["max_gain"])
    return cls(key, c, record["loss"], safety, record["start"], 0.0)


def _fit_shape(key: ShapeKey, settings: CalibrationSettings, real: Optional[np.ndarray],
               optimizer: Optional[optax.GradientTransformation]) -> CalibrationResult:
  """Fits ``key`` to its mix of spectra; the best safe candidate wins."""
  start = time.perf_counter()
  s = settings
  gauss = spectra_lib.gaussian_spectra(key, num_values=s.num_values, seed=s.seed,
                                       normalization=s.normalization,
                                       max_sample_dim=s.max_sample_dim)
  prior = np.geomspace(s.prior_min, 1.0, s.num_values) if s.prior_fraction > 0.0 else None
  x, w = spectra_lib.weighted_values(gauss, real, s.real_fraction, prior, s.prior_fraction)
  inits = fitting.initial_sets(s.ns_steps, s.per_iteration,
                               key if s.normalization == "schatten4" else None)
  name, loss, coeffs, safety = fitting.best_safe_fit(
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
  if not cache or optimizer is not None:  # a custom optimiser has no stable identity
    return _fit_shape(key, settings, real, optimizer)
  digest = calibration_cache.cache_key(key, dataclasses.asdict(settings), real)
  hit = _cached_result(key, digest, cache_dir)
  if hit is not None:
    return hit
  result = _fit_shape(key, settings, real, optimizer)
  calibration_cache.remember(digest, result)
  if cache_dir:
    calibration_cache.write_file(cache_dir, digest, result.to_record(settings))
  return result


def _cached_result(key: ShapeKey, digest: str,
                   cache_dir: Optional[str]) -> Optional[CalibrationResult]:
  """The result cached in memory, else in ``cache_dir`` (then also kept in memory)."""
  hit = calibration_cache.recall(digest)
  if hit is not None:
    return dataclasses.replace(hit, seconds=0.0)
  record = calibration_cache.read_file(cache_dir, digest) if cache_dir else None
  if record is None:
    return None
  hit = CalibrationResult.from_record(key, record)
  calibration_cache.remember(digest, hit)
  return hit


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
    cache: Reuse results for identical settings (in memory;
      `clear_calibration_cache`).
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


def coefficients_for_shape(shape: Sequence[int] | str, ns_steps: int,
                           cache_dir: calibration_cache.CacheDir = None,
                           normalization: str = "schatten4") -> CalibrationResult:
  """Coefficients for a shape the ``'auto'`` table lacks, fitted with `AUTO_SETTINGS`.

  `calibrate_shape` for ``ns_steps`` and ``normalization``, cached in
  ``cache_dir`` (`calibration_cache.resolve_cache_dir`): ~1 s, NumPy only, no
  compilation, and deterministic, so every process of a multi-host job gets
  the same digits without talking. Every result passes `check_safety`.
  """
  settings = dict(calibration_cache.AUTO_SETTINGS, normalization=normalization)
  return calibrate_shape(shape, ns_steps=ns_steps,
                         cache_dir=calibration_cache.resolve_cache_dir(cache_dir), **settings)
