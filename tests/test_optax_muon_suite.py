"""optax's own Muon tests, run against `root()` configured as Muon's step.

The test file is `optax/contrib/_muon_test.py` of the installed optax, read
when this module is imported (not copied). Two things change when it runs:
its `_muon.muon` is `root()` with ROOT's own stages off (``variant='paper',
quantile=1.0``) and every Muon argument passed through with Muon's defaults
(coefficients, ``eps`` also as AdamW's epsilon, weight decay, width scaling,
AdamW's betas, Nesterov in both branches); and the one line that reads
Muon's momentum out of Muon's state layout (``state[0]['muon'][0][0][1]``)
reads ROOT's with `root_optax.momentum_buffer`. Tests that never call
`muon()` (they test optax's private helpers) and the complex-parameter tests
are skipped by name, with the reason.
"""

import inspect
import pathlib
import types
import unittest

import optax
import pytest
from optax.contrib import _muon

import root_optax

_SOURCE = pathlib.Path(_muon.__file__).with_name("_muon_test.py")
_MU_IN_MUON_STATE = "get_muon_mu = lambda state: state[0]['muon'][0][0][1]"
_MU_IN_ROOT_STATE = "get_muon_mu = lambda state: root_optax.momentum_buffer(state)"
# Test-name prefixes skipped, with why.
SKIPPED = {
    "test_reshape_inverse": "tests optax's private _compute_muon_reshape; muon() is not called",
    "test_newton_schulz": "tests optax's orthogonalize_via_newton_schulz (real and complex); "
                          "muon() is not called",
    "test_complex_mixed_target": "complex parameters: root() trains them with AdamW (ROOT's "
                                 "clip needs an order and its Newton-Schulz a real Gram "
                                 "matrix), so this would test optax's AdamW, not Muon's step",
}
_MUON_SIGNATURE = inspect.signature(_muon.muon)


def root_as_muon(*args, **kwargs) -> optax.GradientTransformation:
  """``optax.contrib.muon(*args, **kwargs)``'s step, built by `root_optax.root`."""
  bound = _MUON_SIGNATURE.bind(*args, **kwargs)
  bound.apply_defaults()
  muon_args = bound.arguments
  return root_optax.root(**muon_args, variant="paper", quantile=1.0,
                         adam_eps=muon_args["eps"], adam_nesterov=muon_args["nesterov"])


class _MuonOnRoot(types.SimpleNamespace):
  """optax's `_muon` module with `muon` replaced by `root_as_muon`."""

  muon = staticmethod(root_as_muon)

  def __getattr__(self, name):
    return getattr(_muon, name)


def _load_optax_muon_tests() -> types.ModuleType:
  source = _SOURCE.read_text()
  if source.count(_MU_IN_MUON_STATE) != 1:
    raise AssertionError(f"{_SOURCE} changed: expected one line {_MU_IN_MUON_STATE!r}")
  # Same line count, so tracebacks point at the right lines of optax's file.
  source = source.replace(_MU_IN_MUON_STATE, _MU_IN_ROOT_STATE)
  module = types.ModuleType("optax_muon_test_on_root")
  module.__file__ = str(_SOURCE)
  exec(compile(source, str(_SOURCE), "exec"), module.__dict__)  # pylint: disable=exec-used
  module.root_optax = root_optax
  module._muon = _MuonOnRoot()  # pylint: disable=protected-access
  return module


if not _SOURCE.exists():
  pytest.skip(f"the installed optax has no {_SOURCE.name}", allow_module_level=True)
_OPTAX_TESTS = _load_optax_muon_tests()


class OptaxMuonTestsOnRoot(_OPTAX_TESTS.MuonTest):
  """Every test of optax's `MuonTest`, on `root_as_muon` (pytest collects this class only)."""


for _name in dir(OptaxMuonTestsOnRoot):
  _reason = next((r for prefix, r in SKIPPED.items() if _name.startswith(prefix)), None)
  if _name.startswith("test") and _reason is not None:
    setattr(OptaxMuonTestsOnRoot, _name, unittest.skip(_reason)(lambda self: None))


def test_the_optax_file_has_the_tests_this_module_skips_and_runs():
  names = [n for n in dir(OptaxMuonTestsOnRoot) if n.startswith("test")]
  for prefix in SKIPPED:
    assert any(n.startswith(prefix) for n in names), f"optax's file has no {prefix}: update SKIPPED"
  run = [n for n in names if not any(n.startswith(p) for p in SKIPPED)]
  assert len(run) >= 19, run  # 26 tests in optax 0.2.8, 7 of them skipped here
  assert _OPTAX_TESTS._muon.muon is root_as_muon  # pylint: disable=protected-access
