"""Tests for root_optax._src.coefficients: shipped tables and presets, loading, safety."""

import inspect
import json
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from _helpers import REFERENCE_SCRIPT
from _helpers import held_out
from _helpers import numpy_error
from root_optax._src import coefficients
from root_optax._src import polynomials

MUON = (3.4445, -4.7750, 2.0315)
LR = 0.01

# Verbatim from ../shared/REFERENCE.md.
PAPER_TABLE_1 = {
    (2048, 2048): (3.3334, -4.2591, 1.7791), (4096, 4096): (3.3732, -4.6134, 2.0576),
    (8192, 8192): (3.3886, -4.9026, 2.3105), (2048, 3072): (2.9091, -3.8108, 1.8600),
    (2048, 4096): (2.7739, -3.4911, 1.6992), (2048, 8192): (2.5925, -3.0010, 1.4138),
    (2048, 16384): (2.7045, -3.2335, 1.5336),
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


def test_unsafe_entries_flag_only_the_reference_square():
  flagged = coefficients.unsafe_entries(root_optax.load_coefficients("reference"), 5)
  assert set(flagged) == {"2048x2048"}
  assert not coefficients.unsafe_entries(root_optax.load_coefficients("paper"), 5)


def test_building_with_reference_table_warns():
  with pytest.warns(UserWarning, match=r"2048x2048.*3\.31"):
    root_optax.ada_newton_orthogonalize("reference")


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


@pytest.mark.parametrize("suffix, text", [(".json", '{"4x4": [1, 2, 3],'), (".yaml", "4x4: [1, 2\n  - : ]")])
def test_table_file_that_does_not_parse_names_the_file(tmp_path, suffix, text):
  path = tmp_path / f"broken{suffix}"
  path.write_text(text)
  with pytest.raises(ValueError, match=f"broken\\{suffix}"):
    root_optax.root(LR, ns_coeffs=str(path))


def test_table_file_with_bad_entry_names_the_entry(tmp_path):
  path = tmp_path / "table.json"
  path.write_text(json.dumps({"shapes": {"4x8": [1.0, 2.0]}}))
  with pytest.raises(ValueError, match=r"coefficients\['table\.json'\]\[4x8\] must have shape"):
    root_optax.root(LR, ns_coeffs=str(path))
  path.write_text(json.dumps([MUON]))
  with pytest.raises(ValueError, match="must hold a mapping, got list"):
    root_optax.root(LR, ns_coeffs=str(path))


def test_shipped_preset_that_does_not_parse_names_the_file(tmp_path, monkeypatch):
  package = tmp_path / "fake_presets"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "coefficients.json").write_text(json.dumps({"muon": {"default": list(MUON)}}))
  (package / "preset_broken.json").write_text("{ not json")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(coefficients, "_DATA_PACKAGE", "fake_presets")
  with pytest.raises(ValueError, match="preset_broken.json"):
    root_optax.preset_names()


# Entries known to leave the [0, 1.5] band after 5 steps (REFERENCE.md: the
# authors' square triple sends 0.559 to 3.31). Any new preset must be safe.
_KNOWN_UNSAFE = {"reference": {"2048x2048"}}


def _independent_envelope(triples, ns_steps, grid):
  """Max and min of the composed quintic, composed by hand in float64."""
  triples = [tuple(t) for t in np.atleast_2d(triples)]
  triples += [triples[-1]] * (ns_steps - len(triples))
  y = grid.copy()
  for a, b, c in triples:
    y = a * y + b * y**3 + c * y**5
  return y


@pytest.mark.parametrize("preset", root_optax.preset_names())
def test_every_shipped_preset_stays_in_a_bounded_band(preset):
  table = root_optax.load_coefficients(preset)
  ns_steps = max(5, max(c.shape[0] for c in table.entries().values()))
  grid = np.linspace(0.0, 1.0, 200_001)
  flagged = set()
  for key, triples in table.entries().items():
    y = _independent_envelope(triples, ns_steps, grid)
    assert np.all(y[grid >= 1e-3] > 0), f"{preset}[{key}] flips the sign of a singular value"
    if np.max(np.abs(y)) > polynomials.DEFAULT_MAX_GAIN:
      flagged.add(key)
  assert flagged == _KNOWN_UNSAFE.get(preset, set())
  assert set(coefficients.unsafe_entries(table, ns_steps)) == flagged


def test_reference_square_triple_overshoots_on_a_real_matrix_and_warns():
  # Rank 2 with normalised singular values (0.5591, 0.8291): the first sits
  # on the triple's peak, so 5 steps leave a singular value of ~3.3, not ~1.
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(64, 2)))
  v, _ = np.linalg.qr(rng.normal(size=(96, 2)))
  x = jnp.asarray(u @ np.diag([0.5591, np.sqrt(1 - 0.5591**2)]) @ v.T, jnp.float32)
  s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)[:2] / np.linalg.norm(np.asarray(x, np.float64))
  reference = root_optax.load_coefficients("reference").shapes[(2048, 2048)]
  grown = np.linalg.norm(root_optax.newton_schulz(x, np.repeat(reference, 5, 0)), 2)
  expected = np.max(_independent_envelope(reference, 5, s))
  assert grown == pytest.approx(expected, rel=1e-3) and grown > 3.0
  paper = root_optax.load_coefficients("paper").shapes[(2048, 2048)]
  assert np.linalg.norm(root_optax.newton_schulz(x, np.repeat(paper, 5, 0)), 2) < 1.25
  with pytest.warns(UserWarning, match=r"'reference'\[2048x2048\].*0\.559.*3\.31"):
    root_optax.root(LR, ns_coeffs="reference")


def test_defaults_do_not_use_the_flagged_triple_and_build_silently():
  assert inspect.signature(root_optax.ada_newton_orthogonalize).parameters["coefficients"].default == "auto"
  assert root_optax._src.variants.VARIANT_DEFAULTS["robust"]["ns_coeffs"] == "muon"
  assert root_optax._src.variants.VARIANT_DEFAULTS["paper"]["ns_coeffs"] == "paper"
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    root_optax.root(LR)
    root_optax.ada_newton_orthogonalize()


def test_nearest_fallback_lookup_and_round_trip(tmp_path):
  table = root_optax.load_coefficients({
      "fallback": "nearest", "shapes": {"256x256": [1, 0, 0], "256x1024": [2, 0, 0]}})
  assert table.lookup((300, 1200)) == (table.shapes[(256, 1024)], False)
  assert table.lookup((900, 1000))[0][0, 0] == 1
  path = tmp_path / "t.json"
  path.write_text(json.dumps(table.to_json_dict()))
  assert root_optax.load_coefficients(str(path)).fallback == "nearest"
  assert root_optax.load_coefficients("paper").lookup((300, 1200))[1] is False
  np.testing.assert_array_equal(root_optax.load_coefficients("paper").lookup((300, 1200))[0],
                                [_reference.MUON])
  with pytest.raises(ValueError, match="fallback"):
    root_optax.load_coefficients({"fallback": "closest", "shapes": {}})


ADA_SHAPES = [(2048, 2048), (4096, 4096), (8192, 8192), (2048, 3072), (2048, 4096), (2048, 8192),
              (2048, 16384)] + [(d, r * d) for d in (256, 512, 768, 1024, 2048) for r in (1, 3, 4)]


def test_ada_preset_loads_covers_shapes_and_is_safe():
  ada = root_optax.load_coefficients("ada")
  assert "ada" in root_optax.preset_names()
  assert ada.normalization == "schatten4" and ada.fallback == "nearest"
  assert set(ADA_SHAPES) <= set(ada.shapes)
  assert not coefficients.unsafe_entries(ada, 5)
  for key, coeffs in ada.shapes.items():
    assert coeffs.shape == (5, 3), key
    assert polynomials.check_safety(coeffs, 5).safe, key


@pytest.mark.parametrize("shape, bound", [((256, 768), 1e-4), ((256, 1024), 1e-4), ((256, 256), 0.01)])
def test_ada_preset_precision_on_held_out_matrices(shape, bound):
  ada = root_optax.load_coefficients("ada")
  held = held_out(shape, n=2)
  ours = np.mean([numpy_error(ada.lookup(shape)[0], g, "schatten4") for g in held])
  muon = np.mean([numpy_error(_reference.MUON, g) for g in held])
  assert ours <= bound and ours < 0.25 * muon
