"""Newton-Schulz coefficient tables keyed by matrix shape (AdaNewton).

ROOT's "algorithmic robustness" (paper Sec. 4.2, Eq. 4) picks the quintic
Newton-Schulz coefficients ``(a, b, c)`` of ``g(x) = a x + b x^3 + c x^5`` per
matrix shape, keyed ``(min(rows, cols), max(rows, cols))``. A table entry is
either one triple (used at every step, as in the paper) or a list of triples,
one per iteration (as in Polar Express). The published tables ship as data in
``root_optax/data/coefficients.json`` (and ``preset_*.json`` beside it); the
polynomials themselves are in ``polynomials.py``, the normalisation names in
``normalization.py``.
"""

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any, Union

import numpy as np

from root_optax._src import normalization as normalization_lib
from root_optax._src import polynomials
from root_optax._src import validation

ShapeKey = tuple[int, int]

_DATA_PACKAGE = "root_optax.data"
_PRESET_FILE = "coefficients.json"
_YAML_SUFFIXES = (".yaml", ".yml")
# What `CoefficientTable.lookup` returns for a shape the table does not hold.
DEFAULT = "default"
NEAREST = "nearest"
CALIBRATE = "calibrate"
FALLBACKS = (DEFAULT, NEAREST, CALIBRATE)


@dataclasses.dataclass(frozen=True, eq=False)
class CoefficientTable:
  """Newton-Schulz coefficients per matrix shape.

  Attributes:
    name: A label used in warnings and reports.
    default: ``(T, 3)`` coefficients for shapes not in ``shapes``.
    shapes: Maps ``(min, max)`` to ``(T, 3)`` coefficients.
    normalization: The pre-conditioning the coefficients were fitted for.
    source: Where the numbers came from.
    fallback: For shapes not in ``shapes``: ``'default'`` uses ``default``;
      ``'nearest'`` uses the entry of the nearest shape, by aspect ratio first
      (see `nearest_key`); ``'calibrate'`` fits the shape when it is first
      seen (and an entry fitted for another number of steps), cached in the
      directory of `set_calibration_cache_dir`.
  """

  name: str
  default: np.ndarray
  shapes: Mapping[ShapeKey, np.ndarray]
  normalization: str = "frobenius"
  source: str = ""
  fallback: str = DEFAULT

  def __post_init__(self):
    # The one place entries are validated; every loader builds a table.
    if self.fallback not in FALLBACKS:
      raise ValueError(f"coefficients table {self.name!r}: fallback must be one of "
                       f"{FALLBACKS}, got {self.fallback!r}")
    where = f"coefficients[{self.name!r}]"
    shapes = {}
    for key, value in self.shapes.items():
      m, n = shape_key(key)
      shapes[(m, n)] = polynomials.as_coefficient_array(value, f"{where}[{m}x{n}]")
    object.__setattr__(self, "shapes", shapes)
    default = polynomials.as_coefficient_array(self.default, f"{where}['default']")
    object.__setattr__(self, "default", default)
    normalization_lib.validate_normalization(self.normalization)

  def lookup(self, key: ShapeKey) -> tuple[np.ndarray, bool]:
    """Returns ``(coefficients, found)`` for a ``(min, max)`` shape key."""
    key = shape_key(key)
    if key in self.shapes:
      return self.shapes[key], True
    if self.fallback == NEAREST and self.shapes:
      return self.shapes[nearest_key(key, self.shapes)], False
    return self.default, False

  def entries(self) -> dict[str, np.ndarray]:
    """All coefficient arrays, by printable key (``'default'`` included)."""
    out = {"default": self.default}
    out.update({f"{m}x{n}": c for (m, n), c in self.shapes.items()})
    return out

  def check_steps(self, ns_steps: int) -> None:
    """Raises if an entry holds more per-iteration triples than ``ns_steps``.

    Under the ``'calibrate'`` fallback such an entry is refitted for
    ``ns_steps`` instead, so nothing is checked.
    """
    if self.fallback == CALIBRATE:
      return
    for key, coeffs in self.entries().items():
      polynomials.steps_schedule(coeffs, ns_steps, f"coefficients[{self.name!r}][{key}]")

  def to_json_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict that `load_coefficients` reads back."""
    as_list = lambda c: c.tolist() if len(c) > 1 else c[0].tolist()
    return {
        "source": self.source,
        "normalization": self.normalization,
        "fallback": self.fallback,
        "default": as_list(self.default),
        "shapes": {f"{m}x{n}": as_list(c) for (m, n), c in self.shapes.items()},
    }


def nearest_key(key: ShapeKey, keys) -> ShapeKey:
  """The key of ``keys`` closest to ``key``: aspect ratio first, then size.

  Distance ``(ln r - ln r')^2 + (ln m - ln m')^2 / 4`` with ``r = max / min``
  and ``m = min``: the shape of a normalised Gaussian spectrum depends on the
  aspect ratio (Marchenko-Pastur), its scale only weakly on ``m``
  (``m^(-1/4)`` under Schatten-4 normalisation). Ties go to the larger key.
  """
  m, n = shape_key(key)

  def distance(k):
    return (math.log((n / m) / (k[1] / k[0]))) ** 2 + 0.25 * math.log(m / k[0]) ** 2

  return min(sorted(keys, reverse=True), key=distance)


CoefficientSpec = Union[str, os.PathLike, Mapping, Sequence, CoefficientTable]


def shape_key(shape: Sequence[int] | str) -> ShapeKey:
  """Returns the ``(min, max)`` key of a matrix shape or of a ``'MxN'`` string."""
  if isinstance(shape, str):
    parts = shape.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      raise ValueError(f"coefficient table key must look like '768x3072', got {shape!r}")
    shape = tuple(int(p) for p in parts)
  if len(shape) != 2 or min(shape) < 1:
    raise ValueError(f"a matrix shape key needs two positive sizes, got {shape!r}")
  return (int(min(shape)), int(max(shape)))


def preset_names() -> tuple[str, ...]:
  """Names of the coefficient tables shipped with the package."""
  return tuple(sorted(_read_presets()))


def _read_presets() -> dict[str, Any]:
  data_dir = resources.files(_DATA_PACKAGE)
  presets = _parse_preset_file(data_dir.joinpath(_PRESET_FILE))
  for entry in data_dir.iterdir():
    name = entry.name
    if name.startswith("preset_") and name.endswith(".json"):
      presets[name[len("preset_"):-len(".json")]] = _parse_preset_file(entry)
  # 'auto': the 'ada' entries, and any other shape calibrated when first seen.
  presets["auto"] = dict(presets["ada"], fallback=CALIBRATE, meta={},
                         source="'ada' entries; other shapes calibrated on first use")
  return presets


def _parse_preset_file(entry) -> Any:
  try:
    return json.loads(entry.read_text())
  except ValueError as e:
    raise ValueError(f"shipped coefficients file {entry.name!r} does not parse: {e}") from e


# Muon's triple (the usual default), as the shipped 'muon' preset holds it.
MUON_COEFFICIENTS = tuple(
    _parse_preset_file(resources.files(_DATA_PACKAGE).joinpath(_PRESET_FILE))["muon"]["default"])


def _read_table_file(path: str) -> Any:
  try:
    with open(path) as f:
      if path.endswith(_YAML_SUFFIXES):
        import yaml  # pylint: disable=import-outside-toplevel
        return yaml.safe_load(f)
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"coefficients file {path!r} could not be read: {e}") from e
  except Exception as e:  # yaml.YAMLError does not subclass ValueError.
    if type(e).__module__.startswith("yaml"):
      raise ValueError(f"coefficients file {path!r} could not be parsed: {e}") from e
    raise


def _table_from_mapping(name: str, data: Mapping) -> CoefficientTable:
  """A table from ``{'default': ..., 'shapes': {...}, ...}`` or a bare ``{'MxN': ...}``."""
  if not ("shapes" in data or "default" in data):
    data = {"shapes": data}
  unknown = set(data) - {"shapes", "default", "normalization", "source", "fallback", "meta"}
  if unknown:
    raise ValueError(f"coefficients table {name!r} has unknown fields {sorted(unknown)}")
  return CoefficientTable(
      name=name,
      default=data.get("default", MUON_COEFFICIENTS),
      shapes=data.get("shapes", {}) or {},
      normalization=data.get("normalization", "frobenius"),
      source=str(data.get("source", "")),
      fallback=data.get("fallback", DEFAULT),
  )


def load_coefficients(spec: CoefficientSpec) -> CoefficientTable:
  """Builds a `CoefficientTable` from a preset name, a file, a dict or triples.

  Args:
    spec: One of: a preset name (``'auto'``, ``'ada'``, ``'paper'``,
      ``'reference'``, ``'muon'``, ``'classic'``: see `preset_names`); a path to a JSON or
      YAML file; a mapping ``{'768x3072': (a, b, c), ...}`` or
      ``{'default': ..., 'shapes': {...}, 'normalization': ...}``; one triple
      ``(a, b, c)`` or a list of per-iteration triples used for every shape;
      or a `CoefficientTable`.

  Returns:
    The validated table.

  Raises:
    ValueError: if the spec is unknown, a file does not parse, or an entry is
      not a finite ``(3,)`` or ``(T, 3)`` array.
  """
  if isinstance(spec, CoefficientTable):
    return spec
  name = validation.shown("coefficients")  # `root()` calls it ns_coeffs
  if isinstance(spec, (str, os.PathLike)):
    text = os.fspath(spec)
    presets = _read_presets()
    if text in presets:
      return _table_from_mapping(text, presets[text])
    if os.path.exists(text):
      data = _read_table_file(text)
      if not isinstance(data, Mapping):
        raise ValueError(f"coefficients file {text!r} must hold a mapping, got {type(data).__name__}")
      return _table_from_mapping(os.path.basename(text), data)
    raise ValueError(
        f"{name} must be a preset in {preset_names()} or an existing "
        f"JSON/YAML file, got {text!r}")
  if isinstance(spec, Mapping):
    return _table_from_mapping("custom", spec)
  if isinstance(spec, (Sequence, np.ndarray)):
    # One entry for every shape: errors name it as the caller does.
    default = polynomials.as_coefficient_array(spec, name)
    return CoefficientTable(name="custom", default=default, shapes={})
  raise TypeError(
      f"{name} must be a preset name, a path, a mapping, a sequence of "
      f"triples or a CoefficientTable, got {type(spec).__name__}")


def unsafe_entries(
    table: CoefficientTable, ns_steps: int, max_gain: float = polynomials.DEFAULT_MAX_GAIN,
) -> dict[str, polynomials.Envelope]:
  """Entries of ``table`` whose composed polynomial exceeds ``max_gain`` on [0, 1]."""
  validation.at_least("max_gain", max_gain, 1.0)
  out = {}
  for key, coeffs in table.entries().items():
    if coeffs.shape[0] > ns_steps:
      continue
    env = polynomials.polynomial_envelope(coeffs, ns_steps)
    if not math.isfinite(env.max_value) or env.max_value > max_gain:
      out[key] = env
  return out


def warn_if_unsafe(
    table: CoefficientTable, ns_steps: int, max_gain: float = polynomials.DEFAULT_MAX_GAIN,
    stacklevel: int = 2,
) -> None:
  """Warns once per overshooting entry of ``table``; see `unsafe_entries`.

  ``stacklevel`` is that of `warnings.warn` as seen from this function's caller.
  """
  for key, env in unsafe_entries(table, ns_steps, max_gain).items():
    warnings.warn(
        f"root_optax: coefficients {table.name!r}[{key}] amplify a normalised "
        f"singular value of {env.argmax:.4f} to {env.max_value:.3f} after "
        f"{ns_steps} Newton-Schulz steps (bound {max_gain}); updates along such "
        "directions will be too large. Use coefficients='paper' or 'ada', or "
        "a calibrated table.", UserWarning, stacklevel=stacklevel + 1)
