"""Tests for root_optax._src.polynomials: composed quintics, envelopes, safety."""

import numpy as np
import pytest

import _reference
import root_optax
from _helpers import REFERENCE_SCRIPT
from _helpers import REFERENCE_SQUARE
from root_optax._src import polynomials


def test_reference_square_triple_overshoots_as_measured():
  # REFERENCE.md: max over [0, 1] is 3.314 at 0.5591 after 5 steps.
  env = root_optax.polynomial_envelope(REFERENCE_SCRIPT[(2048, 2048)], 5)
  assert env.max_value == pytest.approx(3.314, abs=1e-3)
  assert env.argmax == pytest.approx(0.5591, abs=1e-4)
  muon = root_optax.polynomial_envelope((3.4445, -4.7750, 2.0315), 5)
  assert muon.max_value == pytest.approx(1.202, abs=1e-3)
  assert muon.min_value == pytest.approx(0.682, abs=1e-3)


def test_composed_polynomial_matches_direct_composition():
  a, b, c = 3.4445, -4.7750, 2.0315
  g = lambda x: a * x + b * x**3 + c * x**5
  x = np.linspace(0, 1, 11)
  np.testing.assert_allclose(root_optax.composed_polynomial((a, b, c), x, 3), g(g(g(x))), rtol=1e-12)


def test_diverging_composition_is_inf_without_overflow_warnings():
  """A set whose iterates blow up (as fits from bad starts do) gives +-inf where
  they pass 1e30, with no NumPy overflow warning; the rest is exact."""
  a, b, c = 30.0, -4.775, 2.0315
  g = lambda x: a * x + b * x**3 + c * x**5
  x = np.array([0.0, 1e-7, 0.3, 0.5, -0.5, np.nan])
  with np.errstate(all="raise"):
    y = root_optax.composed_polynomial((a, b, c), x, 5)
    report = polynomials.check_safety((a, b, c), 5)
  with np.errstate(all="ignore"):
    direct = g(g(g(g(g(x)))))
  assert y[0] == 0.0 and y[1] == pytest.approx(direct[1], rel=1e-12) and abs(y[1]) < 1e30
  assert not np.isfinite(direct[2:5]).any()  # plain float64 overflows (inf - inf: nan)
  assert y[2] == y[3] == np.inf and y[4] == -np.inf and np.isnan(y[5])  # odd: g(-x) = -g(x)
  assert not report.safe and report.envelope.max_value == np.inf


def test_steps_schedule_pads_with_last_and_rejects_long_lists():
  sched = polynomials.steps_schedule([(1, 2, 3), (4, 5, 6)], 4)
  np.testing.assert_array_equal(sched, [(1, 2, 3), (4, 5, 6), (4, 5, 6), (4, 5, 6)])
  with pytest.raises(ValueError, match="ns_steps"):
    polynomials.steps_schedule([(1, 2, 3)] * 6, 5)


def test_safety_rejects_overshooting_sets():
  report = polynomials.check_safety(REFERENCE_SQUARE, 5)
  assert not report.safe
  assert report.envelope.max_value == pytest.approx(3.314, abs=1e-3)
  assert polynomials.check_safety(_reference.MUON, 5).safe
  flips = polynomials.check_safety((-1.0, 0.0, 0.0), 5)  # |g| <= 1 but a sign flip
  assert not flips.safe and flips.min_signed < 0
