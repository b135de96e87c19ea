"""root_optax: ROOT (Robust Orthogonalized Optimizer) as composable Optax transforms.

ROOT (He et al., 2025, arXiv 2511.20626) is Muon with two robustness fixes:
shape-specific Newton-Schulz coefficients (AdaNewton) and soft-thresholding of
momentum outliers before orthogonalisation. Each step is a plain
`optax.GradientTransformation`; `root()` chains them. The public API is
``__all__``; everything under ``root_optax._src`` is private.
"""

from root_optax._src import moved_modules as _moved_modules
from root_optax._src import signatures as _signatures
from root_optax._src.alias import root
from root_optax._src.bursts import BurstStats
from root_optax._src.bursts import ClipBurstsState
from root_optax._src.bursts import clip_bursts
from root_optax._src.calibration import calibrate
from root_optax._src.calibration_cache import clear_calibration_cache
from root_optax._src.calibration_cache import set_calibration_cache_dir
from root_optax._src.coefficients import CoefficientTable
from root_optax._src.coefficients import load_coefficients
from root_optax._src.coefficients import preset_names
from root_optax._src.diagnostics import diagnostics
from root_optax._src.dimensions import DimensionNumbers
from root_optax._src.gate import GateOutliersState
from root_optax._src.gate import GateStats
from root_optax._src.gate import gate_outliers
from root_optax._src.labels import default_labels
from root_optax._src.labels import route_by_path
from root_optax._src.momentum import momentum_buffer
from root_optax._src.momentum import scale_to_average
from root_optax._src.momentum import trace
from root_optax._src.newton_schulz import newton_schulz
from root_optax._src.orthogonalize import ada_newton_orthogonalize
from root_optax._src.outliers import OutlierStats
from root_optax._src.outliers import SoftThresholdState
from root_optax._src.outliers import soft_threshold
from root_optax._src.outliers import soft_threshold_outliers
from root_optax._src.outliers import split_outliers
from root_optax._src.polynomials import SafetyReport
from root_optax._src.polynomials import check_safety
from root_optax._src.polynomials import composed_polynomial
from root_optax._src.polynomials import polynomial_envelope
from root_optax._src.quantiles import exact_abs_quantile
from root_optax._src.quantiles import fast_abs_quantiles
from root_optax._src.routing import Route
from root_optax._src.routing import describe
from root_optax._src.routing import routes
from root_optax._src.scaling import scale_by_shape
from root_optax._src.spectra import SpectrumRecorder

__version__ = "0.4.0"

__all__ = (
    "BurstStats",
    "ClipBurstsState",
    "CoefficientTable",
    "DimensionNumbers",
    "GateOutliersState",
    "GateStats",
    "OutlierStats",
    "Route",
    "SafetyReport",
    "SoftThresholdState",
    "SpectrumRecorder",
    "ada_newton_orthogonalize",
    "calibrate",
    "check_safety",
    "clear_calibration_cache",
    "clip_bursts",
    "composed_polynomial",
    "default_labels",
    "describe",
    "diagnostics",
    "exact_abs_quantile",
    "fast_abs_quantiles",
    "gate_outliers",
    "load_coefficients",
    "momentum_buffer",
    "newton_schulz",
    "polynomial_envelope",
    "preset_names",
    "root",
    "route_by_path",
    "routes",
    "scale_by_shape",
    "scale_to_average",
    "set_calibration_cache_dir",
    "soft_threshold",
    "soft_threshold_outliers",
    "split_outliers",
    "trace",
)

# `help(root)` and the API docs show type aliases by name (`optax.ScalarOrSchedule`,
# `CoefficientSpec`, ...) instead of the Unions they stand for.
_signatures.show_alias_names(globals()[name] for name in __all__)

# 0.3.0's module names (`root_optax.stacking`, ...), with a DeprecationWarning until 0.5.0.
_MOVED = _moved_modules.install(__name__, __all__)


def __getattr__(name: str):
  if name in _MOVED:
    return _MOVED[name]
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
