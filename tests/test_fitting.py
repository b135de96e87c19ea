"""Tests for root_optax._src.fitting: choosing among fitted coefficient sets."""

import numpy as np

import _reference
from _helpers import REFERENCE_SQUARE
from root_optax._src import fitting
from root_optax._src import polynomials
from root_optax._src import spectra


def test_selection_drops_a_better_but_unsafe_set():
  x = spectra.gaussian_spectra((512, 512), num_values=512)
  w = np.full(x.size, 1.0 / x.size)
  loss = lambda c: np.sum(w * (polynomials.composed_polynomial(c, x, 5) - 1) ** 2)
  assert loss(REFERENCE_SQUARE) < loss(_reference.MUON)  # it fits better (REFERENCE.md)
  cands = {"reference": np.array([REFERENCE_SQUARE]), "muon": np.array([_reference.MUON])}
  name, _, _, safety = fitting.select_safe(cands, x, w, 5, 1.5)
  assert name == "muon" and safety.safe
