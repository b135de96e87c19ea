"""root_optax: ROOT (Robust Orthogonalized Optimizer) as composable Optax transforms.

ROOT (He et al., 2025, arXiv 2511.20626) is Muon with two robustness fixes:
shape-specific Newton-Schulz coefficients (AdaNewton) and soft-thresholding of
momentum outliers before orthogonalisation. Each step is a plain
`optax.GradientTransformation`; `root()` chains them.
"""

from root_optax.alias import root
from root_optax.bursts import BurstStats
from root_optax.bursts import ClipBurstsState
from root_optax.bursts import clip_bursts
from root_optax.calibration_cache import set_calibration_cache_dir
from root_optax.coefficients import CoefficientTable
from root_optax.coefficients import load_coefficients
from root_optax.coefficients import preset_names
from root_optax.diagnostics import diagnostics
from root_optax.dimensions import DimensionNumbers
from root_optax.gate import GateOutliersState
from root_optax.gate import GateStats
from root_optax.gate import gate_outliers
from root_optax.labels import default_labels
from root_optax.labels import route_by_path
from root_optax.momentum import momentum_buffer
from root_optax.momentum import scale_to_average
from root_optax.momentum import trace
from root_optax.newton_schulz import newton_schulz
from root_optax.orthogonalize import ada_newton_orthogonalize
from root_optax.outliers import OutlierStats
from root_optax.outliers import SoftThresholdState
from root_optax.quantiles import exact_abs_quantile
from root_optax.quantiles import fast_abs_quantiles
from root_optax.outliers import soft_threshold
from root_optax.outliers import soft_threshold_outliers
from root_optax.outliers import split_outliers
from root_optax.polynomials import composed_polynomial
from root_optax.polynomials import polynomial_envelope
from root_optax.routing import Route
from root_optax.routing import describe
from root_optax.routing import routes
from root_optax.scaling import scale_by_shape

__version__ = "0.3.0"

__all__ = (
    "BurstStats",
    "ClipBurstsState",
    "CoefficientTable",
    "DimensionNumbers",
    "GateOutliersState",
    "GateStats",
    "OutlierStats",
    "Route",
    "ada_newton_orthogonalize",
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
    "SoftThresholdState",
    "SpectrumRecorder",
    "calibrate",
)

from root_optax.calibration import SpectrumRecorder  # pylint: disable=g-import-not-at-top
from root_optax.calibration import calibrate  # pylint: disable=g-import-not-at-top
from root_optax import _signatures  # pylint: disable=g-import-not-at-top

# `help(root)` and the API docs show type aliases by name (`optax.ScalarOrSchedule`,
# `CoefficientSpec`, ...) instead of the Unions they stand for.
_signatures.show_alias_names(globals()[name] for name in __all__)
