"""Tests for root_optax.calibration, the 'ada' preset and the CLI."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _reference
import root_optax
from root_optax import _fit
from root_optax import calibration
from root_optax import calibration_cache
from root_optax import cli
from root_optax import coefficients

# One optimiser setting for every fit here, so the fit compiles once.
FAST = dict(num_steps=40, num_values=1024)
REFERENCE_SQUARE = (3.4916, -4.8224, 2.1095)  # REFERENCE.md: overshoots to 3.31


def _numpy_error(coeffs, g, normalization="frobenius", steps=5):
  """Table 1 metric from NumPy's SVD, written out independently."""
  s = np.linalg.svd(g, compute_uv=False)
  x = s / np.linalg.norm(g) if normalization == "frobenius" else s / np.sum(s**4) ** 0.25
  rows = list(np.atleast_2d(coeffs)) + [np.atleast_2d(coeffs)[-1]] * steps
  for a, b, c in rows[:steps]:
    x = a * x + b * x**3 + c * x**5
  return np.mean((x - 1.0) ** 2)


def _held_out(shape, n=4, seed=1234):
  rng = np.random.default_rng(seed)
  return [rng.standard_normal(shape) for _ in range(n)]


@pytest.mark.parametrize("normalization", ["frobenius", "schatten4"])
@pytest.mark.parametrize("shape", [(40, 40), (30, 70), (70, 30)])
def test_objective_matches_numpy_svd(shape, normalization):
  g = np.random.default_rng(0).standard_normal(shape)
  s = calibration.matrix_singular_values(g)
  np.testing.assert_allclose(s, np.linalg.svd(g, compute_uv=False), rtol=1e-8, atol=1e-10)
  for coeffs in [_reference.MUON, [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5)]]:
    got = calibration.orthogonalization_error(coeffs, s, 5, normalization)
    assert got == pytest.approx(_numpy_error(coeffs, g, normalization), rel=1e-9)


def test_objective_equals_kernel_distance_to_polar_factor():
  g = np.random.default_rng(1).standard_normal((24, 40))
  u, _, vt = np.linalg.svd(g, full_matrices=False)
  out = np.asarray(root_optax.newton_schulz(jnp.asarray(g, jnp.float32), [_reference.MUON] * 5,
                                            eps=0.0), np.float64)
  kernel = np.sum((out - u @ vt) ** 2) / 24
  assert kernel == pytest.approx(_numpy_error(_reference.MUON, g), rel=1e-3)


def test_normalized_spectrum_of_zero_and_huge_matrices():
  np.testing.assert_array_equal(calibration.normalized_spectrum(np.zeros(5)), np.zeros(5))
  x = calibration.normalized_spectrum(np.array([1e300, 1e299]), "schatten4")
  assert np.all(np.isfinite(x)) and x.max() <= 1.0


@pytest.mark.parametrize("per_iteration", [True, False])
def test_calibrate_beats_muon_on_held_out_matrices(per_iteration):
  shape = (48, 96)
  result = calibration.calibrate_shape(shape, per_iteration=per_iteration, normalization="frobenius",
                                       **FAST)
  assert result.coefficients.shape == ((5, 3) if per_iteration else (1, 3))
  assert result.safety.safe
  fitted = np.mean([_numpy_error(result.coefficients, g) for g in _held_out(shape)])
  muon = np.mean([_numpy_error(_reference.MUON, g) for g in _held_out(shape)])
  assert fitted < 0.2 * muon, (fitted, muon)


def test_per_iteration_schatten4_square_beats_paper_style():
  shape = (64, 64)
  per_iter = calibration.calibrate_shape(shape, **FAST)
  one = calibration.calibrate_shape(shape, per_iteration=False, normalization="frobenius", **FAST)
  held = _held_out(shape)
  err = lambda r, norm: np.mean([_numpy_error(r.coefficients, g, norm) for g in held])
  assert err(per_iter, "schatten4") < 0.5 * err(one, "frobenius")


def test_calibrate_is_deterministic_and_seed_dependent():
  kw = dict(cache=False, normalization="frobenius", **FAST)
  a = calibration.calibrate_shape((32, 32), **kw)
  b = calibration.calibrate_shape((32, 32), **kw)
  c = calibration.calibrate_shape((32, 32), seed=1, **kw)
  np.testing.assert_array_equal(a.coefficients, b.coefficients)
  assert a.loss == b.loss
  assert not np.array_equal(a.coefficients, c.coefficients)


def test_cache_reuses_results_in_memory_and_on_disk(tmp_path):
  calibration.clear_cache()
  first = calibration.calibrate_shape((16, 40), cache_dir=str(tmp_path), **FAST)
  assert first.seconds > 0
  again = calibration.calibrate_shape((40, 16), cache_dir=str(tmp_path), **FAST)  # same key
  assert again.seconds == 0.0
  np.testing.assert_array_equal(first.coefficients, again.coefficients)
  calibration.clear_cache()
  from_disk = calibration.calibrate_shape((16, 40), cache_dir=str(tmp_path), **FAST)
  assert from_disk.seconds == 0.0
  np.testing.assert_array_equal(first.coefficients, from_disk.coefficients)
  assert len(list(tmp_path.iterdir())) == 1


def test_safety_rejects_overshooting_sets():
  report = calibration.check_safety(REFERENCE_SQUARE, 5)
  assert not report.safe
  assert report.envelope.max_value == pytest.approx(3.314, abs=1e-3)
  assert calibration.check_safety(_reference.MUON, 5).safe
  flips = calibration.check_safety((-1.0, 0.0, 0.0), 5)  # |g| <= 1 but a sign flip
  assert not flips.safe and flips.min_signed < 0


def test_selection_drops_a_better_but_unsafe_set():
  x = calibration.gaussian_spectra((512, 512), num_values=512)
  w = np.full(x.size, 1.0 / x.size)
  loss = lambda c: np.sum(w * (coefficients.composed_polynomial(c, x, 5) - 1) ** 2)
  assert loss(REFERENCE_SQUARE) < loss(_reference.MUON)  # it fits better (REFERENCE.md)
  cands = {"reference": np.array([REFERENCE_SQUARE]), "muon": np.array([_reference.MUON])}
  name, _, _, safety = _fit.select_safe(cands, x, w, 5, 1.5)
  assert name == "muon" and safety.safe


def test_fit_stays_in_band_when_the_spectrum_pulls_out_of_it():
  # Only tiny singular values: mapping them to 1 needs a huge gain, which the
  # band forbids; the result must still pass the dense check.
  tiny = [np.geomspace(1e-4, 2e-3, 64)] * 4
  result = calibration.calibrate_shape((64, 64), spectra={(64, 64): tiny}, real_fraction=1.0,
                                       normalization="frobenius", **FAST)
  env = coefficients.polynomial_envelope(result.coefficients, 5)
  assert result.safety.safe and env.max_value <= coefficients.DEFAULT_MAX_GAIN
  assert result.start.endswith("+fit")


def test_recorder_collects_spectra_and_mixes_into_calibration(tmp_path):
  rng = np.random.default_rng(3)
  rec = calibration.SpectrumRecorder(max_per_shape=3)
  for _ in range(4):
    tree = {"w": jnp.asarray(rng.standard_normal((12, 30)), jnp.float32), "b": jnp.ones(30)}
    rec.record(tree)
  assert list(rec.spectra) == [(12, 30)] and len(rec.spectra[(12, 30)]) == 3
  np.testing.assert_allclose(rec.spectra[(12, 30)][-1],
                             np.linalg.svd(np.asarray(tree["w"], np.float64), compute_uv=False),
                             rtol=1e-6)
  rec.save(str(tmp_path / "s.npz"))
  loaded = calibration.SpectrumRecorder.load(str(tmp_path / "s.npz"))
  np.testing.assert_array_equal(loaded.spectra[(12, 30)][0], rec.spectra[(12, 30)][0])
  kw = dict(normalization="frobenius", cache=False, **FAST)
  real = calibration.calibrate_shape((30, 12), spectra=loaded, real_fraction=1.0, **kw)
  plain = calibration.calibrate_shape((30, 12), **kw)
  assert real.safety.safe and not np.array_equal(real.coefficients, plain.coefficients)


def test_mixed_spectra_are_weighted_real_to_random_one_to_three():
  gauss, real = np.full(8, 0.5), np.full(4, 0.25)
  x, w = calibration._weighted_values(gauss, real, calibration.PAPER_REAL_FRACTION)
  assert w.sum() == pytest.approx(1.0)
  assert w[x == 0.25].sum() == pytest.approx(0.25) and w[x == 0.5].sum() == pytest.approx(0.75)
  x, w = calibration._weighted_values(gauss, None, 0.25)
  np.testing.assert_array_equal(x, gauss)


def test_calibrate_returns_a_usable_table():
  table = calibration.calibrate([(16, 40), "24x24"], name="t", **FAST)
  assert set(table.shapes) == {(16, 40), (24, 24)} and table.normalization == "schatten4"
  tx = root_optax.ada_newton_orthogonalize(table)
  out, _ = tx.update({"w": jnp.ones((40, 16)) + jnp.eye(40, 16)}, tx.init(None))
  assert np.all(np.isfinite(out["w"]))


@pytest.mark.parametrize("kwargs", [dict(normalization="aol"), dict(real_fraction=1.5),
                                    dict(max_gain=1.0), dict(ns_steps=0)])
def test_calibrate_validates_arguments(kwargs):
  with pytest.raises((ValueError, TypeError)):
    calibration.calibrate_shape((8, 8), **kwargs)


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
    assert calibration.check_safety(coeffs, 5).safe, key


@pytest.mark.parametrize("shape, bound", [((256, 768), 1e-4), ((256, 1024), 1e-4), ((256, 256), 0.01)])
def test_ada_preset_precision_on_held_out_matrices(shape, bound):
  ada = root_optax.load_coefficients("ada")
  held = _held_out(shape, n=2)
  ours = np.mean([_numpy_error(ada.lookup(shape)[0], g, "schatten4") for g in held])
  muon = np.mean([_numpy_error(_reference.MUON, g) for g in held])
  assert ours <= bound and ours < 0.25 * muon


def test_cli_writes_a_table_that_loads(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "tqdm", None)  # no tqdm: plain progress lines
  out = tmp_path / "sub" / "table.json"
  assert cli.main(["calibrate", "--shape", "16x40", "--shape", "24x24", "--out", str(out),
                   "--num-steps", "40", "--num-values", "1024"]) == 0
  assert "[2/2]" in capsys.readouterr().err
  table = root_optax.load_coefficients(str(out))
  assert set(table.shapes) == {(16, 40), (24, 24)} and table.normalization == "schatten4"
  direct = calibration.calibrate_shape((16, 40), **FAST)
  np.testing.assert_allclose(table.shapes[(16, 40)], direct.coefficients)
  assert json.loads(out.read_text())["meta"]["24x24"]["max_gain"] <= 1.5


def test_cli_help_is_plain_text(capsys):
  """`root-optax --help` shows no reStructuredText markup (the module docstring's)."""
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["--help"])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  assert "root-optax calibrate --shape" in text and "`" not in text, text


def _auto_fit_in_a_new_process(shape, cache_dir):
  code = ("import json, sys; from root_optax import calibration_cache as c; "
          f"r = c.coefficients_for_shape({shape!r}, 5, cache_dir={cache_dir!r}); "
          "print(json.dumps(r.coefficients.tolist()))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout)


def test_auto_coefficients_are_identical_in_two_processes_and_safe():
  first = _auto_fit_in_a_new_process((40, 72), False)
  second = _auto_fit_in_a_new_process((72, 40), False)
  assert first == second
  assert calibration.check_safety(np.asarray(first), 5).safe
  held = _held_out((40, 72))
  ours = np.mean([_numpy_error(first, g, "schatten4") for g in held])
  muon = np.mean([_numpy_error(_reference.MUON, g) for g in held])
  assert ours < 0.1 * muon


def test_auto_cache_miss_writes_hit_reads_and_a_bad_directory_falls_back(tmp_path, caplog):
  miss = calibration_cache.coefficients_for_shape((24, 56), 4, cache_dir=str(tmp_path))
  files = list(tmp_path.glob("*.json"))
  assert len(files) == 1 and miss.seconds > 0 and miss.coefficients.shape == (4, 3)
  calibration.clear_cache()
  hit = calibration_cache.coefficients_for_shape((24, 56), 4, cache_dir=str(tmp_path))
  assert hit.seconds == 0.0
  np.testing.assert_array_equal(hit.coefficients, miss.coefficients)
  blocked = tmp_path / "a_file"
  blocked.write_text("")
  with caplog.at_level(logging.INFO, logger="root_optax"):
    for shape in [(24, 57), (24, 58)]:
      calibration_cache.coefficients_for_shape(shape, 4, cache_dir=str(blocked / "cache"))
  assert sum("not writable" in r.message for r in caplog.records) == 1


def test_auto_cache_never_inside_the_package_and_false_means_memory():
  package = os.path.dirname(root_optax.__file__)
  assert calibration_cache.resolve_cache_dir(os.path.join(package, "data")) is None
  assert calibration_cache.resolve_cache_dir(False) is None
  root_optax.set_calibration_cache_dir("/tmp/somewhere")
  try:
    assert calibration_cache.resolve_cache_dir() == "/tmp/somewhere"
  finally:
    root_optax.set_calibration_cache_dir(None)
  with pytest.raises(TypeError, match="path"):
    root_optax.set_calibration_cache_dir(3)


def test_auto_table_calibrates_under_eval_shape_and_jit_and_logs_one_line(tmp_path, caplog):
  params = {"a": jnp.ones((20, 44)), "b": jnp.ones((44, 20)), "c": jnp.ones((12, 300))}
  tx = root_optax.root(1e-2, ns_coeffs="auto", calibration_cache_dir=str(tmp_path))
  with caplog.at_level(logging.INFO, logger="root_optax"):
    state = jax.eval_shape(tx.init, params)
    out = jax.eval_shape(tx.update, params, state, params)
    jax.jit(tx.update)(params, tx.init(params), params)
  assert jax.tree.map(lambda x: x.shape, out[0]) == jax.tree.map(lambda x: x.shape, params)
  lines = [r.message for r in caplog.records if "calibrated" in r.message]
  assert len(lines) == 1 and "20x44" in lines[0] and "12x300" in lines[0]


def test_auto_table_recalibrates_entries_fitted_for_other_step_counts(tmp_path):
  params = {"w": jnp.ones((256, 768))}
  grads = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((256, 768)), jnp.float32)}
  tx = root_optax.ada_newton_orthogonalize("auto", ns_steps=3, cache_dir=str(tmp_path))
  out, _ = tx.update(grads, tx.init(params))
  assert len(list(tmp_path.glob("*.json"))) == 1  # the shipped 5-step entry was not used
  s = np.linalg.svd(np.asarray(out["w"], np.float64), compute_uv=False)
  assert np.all(np.abs(s - 1.0) < 0.3)
