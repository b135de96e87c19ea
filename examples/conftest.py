"""Fixtures of the examples' tests (`examples/**/*_test.py`): smoke runs and unit tests."""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_example(module: str, args, workdir: pathlib.Path, timeout: float = 900,
                env_overrides: dict | None = None) -> subprocess.CompletedProcess:
  """Runs ``python -m <module> --quick --workdir <workdir> <args>`` from the repository root."""
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  env.pop("JAX_PLATFORMS", None)  # the examples choose the CPU themselves
  env.update(env_overrides or {})
  proc = subprocess.run([sys.executable, "-m", module, *args, "--quick", "--workdir", str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="session")
def run_quick():
  """``run_quick(module, args, workdir)``: a ``--quick`` run with clean logs;
  returns ``(stdout, summary.csv rows)``."""

  def run(module: str, args, workdir: pathlib.Path):
    proc = run_example(module, args, workdir)
    # Log hygiene: no TPU probe, no progress-bar fragments when not on a terminal.
    assert "Unable to initialize backend" not in proc.stderr
    assert "it/s" not in proc.stderr and "\r" not in proc.stderr + proc.stdout
    with open(workdir / "summary.csv") as f:
      return proc.stdout, list(csv.DictReader(f))

  return run


@pytest.fixture(autouse=True, scope="session")
def _calibration_cache(tmp_path_factory):
  """Coefficients fitted in this process go to a temporary directory, not ~/.cache
  (as in tests/conftest.py; the example processes the smoke runs start use their own)."""
  import root_optax  # pylint: disable=import-outside-toplevel
  root_optax.set_calibration_cache_dir(str(tmp_path_factory.mktemp("root_optax_cache")))
  yield
  root_optax.set_calibration_cache_dir(None)
