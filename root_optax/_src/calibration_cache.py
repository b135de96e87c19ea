"""Where calibrated coefficients are kept: in memory, and as JSON files in a directory.

`calibrate` and `calibrate_shape` remember each result in memory under a
digest of its shape, settings and real spectra (`cache_key`) and, given a
directory, in a small JSON file named by that digest, so a rerun costs a file
read. The ``'auto'`` coefficient table (`root`'s default) calibrates
the shapes it lacks with `AUTO_SETTINGS` (`calibration.coefficients_for_shape`)
and keeps the files in the directory of `set_calibration_cache_dir`.
"""

import hashlib
import json
import logging
import os
from typing import Any, Optional, Union

import numpy as np

from root_optax._src import polynomials

# Gaussian spectra mixed with a 3% log-uniform prior, as the shipped 'ada'
# preset; 2048 values from matrices of at most 256 rows keep a fit near 1 s.
AUTO_SETTINGS = dict(per_iteration=True, normalization="schatten4", prior_fraction=0.03,
                     prior_min=1e-3, seed=0, num_values=2048, max_sample_dim=256)
CacheDir = Union[str, os.PathLike, bool, None]
logger = logging.getLogger("root_optax")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # root_optax/
_override: list = [None]
_MEMORY: dict = {}  # digest -> result
_UNWRITABLE: set = set()  # directories already reported as not writable


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


def cache_key(key: tuple[int, int], settings: dict, real: Optional[np.ndarray]) -> str:
  """The name of a result: a digest of its shape key, its settings and its real spectra."""
  sha = hashlib.sha1(json.dumps([list(key), settings], sort_keys=True).encode())
  if real is not None:
    sha.update(np.ascontiguousarray(real).tobytes())
  return sha.hexdigest()


def clear_calibration_cache() -> None:
  """Forgets every result `calibrate` has cached in memory.

  Files in a cache directory stay. Compiled fitting programs of a custom
  ``optimizer`` (a few, keyed by the optimiser and ``num_steps``) stay in
  JAX's compilation cache; `jax.clear_caches` drops them.
  """
  _MEMORY.clear()


def recall(digest: str) -> Optional[Any]:
  """The result remembered under ``digest``, or None."""
  return _MEMORY.get(digest)


def remember(digest: str, result: Any) -> None:
  """Keeps ``result`` in memory under ``digest``."""
  _MEMORY[digest] = result


def read_file(cache_dir: str, digest: str) -> Optional[dict]:
  """The record stored under ``digest``, its ``'coefficients'`` as a ``(T, 3)`` array.

  Returns:
    The record, or None when the file is missing, unreadable or half-written
    by another process (the caller fits again).
  """
  path = os.path.join(cache_dir, f"{digest}.json")
  try:
    with open(path) as f:
      record = json.load(f)
    record["coefficients"] = polynomials.as_coefficient_array(record["coefficients"])
  except (OSError, ValueError, KeyError):
    return None
  return record


def write_file(cache_dir: str, digest: str, record: dict) -> None:
  """Stores ``record`` under ``digest``, atomically: a reader sees all of it or nothing.

  A directory that cannot be written is reported once in the log; the result
  then stays in memory only.
  """
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f".{digest}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
      json.dump(record, f)
    os.replace(tmp, os.path.join(cache_dir, f"{digest}.json"))
  except OSError as e:
    _report_unwritable(cache_dir, e)


def _report_unwritable(cache_dir: str, error: OSError) -> None:
  """One INFO line per directory that cannot be written."""
  if cache_dir not in _UNWRITABLE:
    _UNWRITABLE.add(cache_dir)
    logger.info("calibration cache %s is not writable (%s); keeping "
                "calibrated coefficients in memory only", cache_dir, error.strerror or error)
