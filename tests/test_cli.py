"""Tests for the `root-optax` command line (root_optax._src.cli)."""

import json
import sys

import numpy as np
import pytest

import root_optax
from _helpers import FAST
from root_optax._src import calibration
from root_optax._src import cli


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


def test_cli_defaults_are_the_calibration_settings(tmp_path, monkeypatch):
  seen = {}

  def fake_calibrate(shapes, **kwargs):
    seen.update(kwargs)
    return root_optax.load_coefficients({"shapes": {}})

  monkeypatch.setattr(calibration, "calibrate", fake_calibrate)
  monkeypatch.setitem(sys.modules, "tqdm", None)  # no progress bar left open
  assert cli.main(["calibrate", "--shape", "8x8", "--out", str(tmp_path / "t.json")]) == 0
  settings = calibration.CalibrationSettings()
  for field in ("ns_steps", "per_iteration", "normalization", "real_fraction", "prior_fraction",
                "prior_min", "seed", "num_steps", "num_values", "max_gain"):
    assert seen[field] == getattr(settings, field), field
