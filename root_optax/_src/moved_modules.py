"""The module names of root_optax 0.3.0, kept for one release with a `DeprecationWarning`.

Up to 0.3.0 the implementation modules were ``root_optax.<module>``; from
0.4.0 they are private (``root_optax._src``) and the public API is
``root_optax``'s ``__all__``. `install` registers each old name as a module
whose attributes are the new module's, and warns when one is read, naming the
public replacement where there is one. They go in 0.5.0.
"""

import importlib
import pkgutil
import sys
import types
import warnings

# Old public-looking module names of 0.3.0 -> their modules under root_optax._src.
MOVED = (
    "alias", "bursts", "calibration", "calibration_cache", "cli", "coefficients", "diagnostics",
    "dimensions", "gate", "labels", "momentum", "newton_schulz", "orthogonalize", "outliers",
    "polynomials", "quantiles", "routing", "scaling", "sharding", "spectra", "stacking",
)
REMOVED_IN = "0.5.0"
# Names that changed in the move: (old module, old name) -> the public name.
RENAMED = {("calibration", "clear_cache"): "clear_calibration_cache"}


class MovedModule(types.ModuleType):
  """``root_optax.<old>``: reads the attributes it had in 0.3.0, with a warning."""

  def __init__(self, old: str, package: str, public: frozenset):
    super().__init__(f"{package}.{old}", f"Deprecated alias of {package}._src.{old}.")
    self._old, self._package, self._public = old, package, public

  def __getattr__(self, attr: str):
    if attr.startswith("__"):
      raise AttributeError(attr)
    public = RENAMED.get((self._old, attr), attr)
    if public in self._public:
      value, instead = getattr(importlib.import_module(self._package), public), f"use root_optax.{public}"
    else:
      value, instead = self._find(attr), "it is internal, with no public replacement"
    warnings.warn(
        f"{self.__name__} is deprecated and goes in root_optax {REMOVED_IN}; "
        f"{self.__name__}.{attr}: {instead}.", DeprecationWarning, stacklevel=2)
    return value

  def _find(self, attr: str):
    """``attr`` from the module's new home, else from the private module it moved to."""
    src = f"{self._package}._src"
    names = [self._old] + [m.name for m in pkgutil.iter_modules(importlib.import_module(src).__path__)]
    for name in names:
      module = importlib.import_module(f"{src}.{name}")
      if hasattr(module, attr):
        return getattr(module, attr)
    raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")


def install(package: str, public) -> dict[str, MovedModule]:
  """Registers ``<package>.<old>`` for every name in `MOVED`; returns them by old name."""
  modules = {}
  for name in MOVED:
    module = MovedModule(name, package, frozenset(public))
    sys.modules.setdefault(module.__name__, module)
    modules[name] = module
  return modules
