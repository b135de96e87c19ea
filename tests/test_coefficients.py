"""Tests for root_optax.coefficients: shipped tables, loading, safety."""

import json

import numpy as np
import pytest

import root_optax
from root_optax import coefficients

# Verbatim from ../shared/REFERENCE.md.
PAPER_TABLE_1 = {
    (2048, 2048): (3.3334, -4.2591, 1.7791), (4096, 4096): (3.3732, -4.6134, 2.0576),
    (8192, 8192): (3.3886, -4.9026, 2.3105), (2048, 3072): (2.9091, -3.8108, 1.8600),
    (2048, 4096): (2.7739, -3.4911, 1.6992), (2048, 8192): (2.5925, -3.0010, 1.4138),
    (2048, 16384): (2.7045, -3.2335, 1.5336),
}
REFERENCE_SCRIPT = {
    (2048, 2048): (3.4916, -4.8224, 2.1095), (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207), (2048, 16384): (3.1943, -3.8221, 1.5322),
}


@pytest.mark.parametrize("name, expected", [("paper", PAPER_TABLE_1), ("reference", REFERENCE_SCRIPT)])
def test_published_tables_are_verbatim(name, expected):
  table = root_optax.load_coefficients(name)
  assert set(table.shapes) == set(expected)
  for key, triple in expected.items():
    np.testing.assert_array_equal(table.shapes[key], [triple])
  np.testing.assert_array_equal(table.default, [(3.4445, -4.7750, 2.0315)])


def test_fixed_presets():
  np.testing.assert_array_equal(root_optax.load_coefficients("classic").default, [(1.875, -1.25, 0.375)])
  np.testing.assert_array_equal(root_optax.load_coefficients("muon").default, [(3.4445, -4.7750, 2.0315)])
  assert {"paper", "reference", "muon", "classic"} <= set(root_optax.preset_names())


def test_lookup_is_orientation_free():
  table = root_optax.load_coefficients("paper")
  assert table.lookup((3072, 2048)) == table.lookup((2048, 3072))
  coeffs, found = table.lookup((7, 5))
  assert not found
  np.testing.assert_array_equal(coeffs, table.default)


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
    report = root_optax.calibration.check_safety((a, b, c), 5)
  with np.errstate(all="ignore"):
    direct = g(g(g(g(g(x)))))
  assert y[0] == 0.0 and y[1] == pytest.approx(direct[1], rel=1e-12) and abs(y[1]) < 1e30
  assert not np.isfinite(direct[2:5]).any()  # plain float64 overflows (inf - inf: nan)
  assert y[2] == y[3] == np.inf and y[4] == -np.inf and np.isnan(y[5])  # odd: g(-x) = -g(x)
  assert not report.safe and report.envelope.max_value == np.inf


def test_unsafe_entries_flag_only_the_reference_square():
  flagged = coefficients.unsafe_entries(root_optax.load_coefficients("reference"), 5)
  assert set(flagged) == {"2048x2048"}
  assert not coefficients.unsafe_entries(root_optax.load_coefficients("paper"), 5)


def test_building_with_reference_table_warns():
  with pytest.warns(UserWarning, match=r"2048x2048.*3\.31"):
    root_optax.ada_newton_orthogonalize("reference")


def test_steps_schedule_pads_with_last_and_rejects_long_lists():
  sched = coefficients.steps_schedule([(1, 2, 3), (4, 5, 6)], 4)
  np.testing.assert_array_equal(sched, [(1, 2, 3), (4, 5, 6), (4, 5, 6), (4, 5, 6)])
  with pytest.raises(ValueError, match="ns_steps"):
    coefficients.steps_schedule([(1, 2, 3)] * 6, 5)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_table_files_round_trip(tmp_path, suffix):
  table = root_optax.load_coefficients({"16x32": [(3.0, -3.0, 1.0), (2.0, -1.0, 0.5)], "8x8": (1.5, -0.5, 0.0)})
  path = tmp_path / f"table{suffix}"
  data = table.to_json_dict()
  if suffix == ".json":
    path.write_text(json.dumps(data))
  else:
    import yaml
    path.write_text(yaml.safe_dump(data))
  loaded = root_optax.load_coefficients(str(path))
  assert set(loaded.shapes) == {(16, 32), (8, 8)}
  np.testing.assert_array_equal(loaded.shapes[(16, 32)], [(3.0, -3.0, 1.0), (2.0, -1.0, 0.5)])


@pytest.mark.parametrize("spec, match", [
    ("no-such-preset", "preset"),
    ({"16x32": (1.0, 2.0)}, "shape"),
    ({"16x32": (1.0, float("nan"), 2.0)}, "finite"),
    ({"16by32": (1.0, 2.0, 3.0)}, "key"),
    ({"default": (1, 2, 3), "normalization": "l2"}, "normalization"),
])
def test_bad_tables_raise(spec, match):
  with pytest.raises(ValueError, match=match):
    root_optax.load_coefficients(spec)


def test_unparseable_file_raises(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    root_optax.load_coefficients(str(path))
