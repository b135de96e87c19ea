"""Coefficients for any shape: calibrated on first sight, cached on disk.

The ``'auto'`` coefficient table (`root`'s default) holds the shipped ``'ada'``
entries; a shape it lacks, or whose entry has another number of steps, is
calibrated once by `coefficients_for_shape` (`calibration.calibrate_shape` with
`AUTO_SETTINGS`: ~1 s, NumPy only, no compilation, the same digits in every
process) and stored as a small JSON file in the cache directory, so a rerun
costs a file read.
"""

import os
from typing import Optional, Union

from root_optax import calibration

# Gaussian spectra mixed with a 3% log-uniform prior, as the shipped 'ada'
# preset; 2048 values from matrices of at most 256 rows keep a fit near 1 s.
AUTO_SETTINGS = dict(per_iteration=True, normalization="schatten4", prior_fraction=0.03,
                     prior_min=1e-3, seed=0, num_values=2048, max_sample_dim=256)
CacheDir = Union[str, os.PathLike, bool, None]
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_override: list = [None]


def set_calibration_cache_dir(path: CacheDir) -> None:
  """Sets where calibrated coefficients are cached, for every transform built after.

  Args:
    path: A directory; False to keep results in memory only; None to restore
      the default (``$XDG_CACHE_HOME/root_optax``, else ``~/.cache/root_optax``).
  """
  if not (path is None or path is False or isinstance(path, (str, os.PathLike))):
    raise TypeError(f"path must be a directory, False or None, got {path!r}")
  _override[0] = path


def default_cache_dir() -> str:
  """The user cache directory: ``$XDG_CACHE_HOME/root_optax`` or ``~/.cache/root_optax``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "root_optax")


def resolve_cache_dir(cache_dir: CacheDir = None) -> Optional[str]:
  """The directory to use (None: memory only); never inside the installed package."""
  chosen = _override[0] if cache_dir is None else cache_dir
  if chosen is False:
    return None
  path = os.path.abspath(os.path.expanduser(os.fspath(chosen or default_cache_dir())))
  if os.path.commonpath([path, _PACKAGE_DIR]) == _PACKAGE_DIR:
    return None
  return path


def coefficients_for_shape(shape, ns_steps: int, cache_dir: CacheDir = None,
                           normalization: str = "schatten4") -> calibration.CalibrationResult:
  """Per-iteration coefficients for ``shape``, ``ns_steps`` and ``normalization``
  (``'schatten4'`` or ``'frobenius'``), from the cache or a fit.

  Deterministic: the same shape and settings give the same digits in every
  process, so the processes of a multi-host job agree without talking.
  Every result passes `calibration.check_safety` on [0, 1].
  """
  settings = dict(AUTO_SETTINGS, normalization=normalization)
  return calibration.calibrate_shape(
      shape, ns_steps=ns_steps, cache_dir=resolve_cache_dir(cache_dir), **settings)
