"""The one-command GPU run, on a CPU: `benchmarks/gpu_run.sh --quick` runs `benchmarks/gpu_suite.py
--quick` and `python -m examples.lm.main --config configs/lm_gpu.py --quick`, and prints one report."""

import csv
import importlib
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import root_optax

from examples.common import optimizers
from examples.common import runtime

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_suite.py"
RUN = REPO / "benchmarks" / "gpu_run.sh"
DTYPES = ("float32", "bfloat16")
TREE_ROWS = ("step time (ms)", "compile time (s)", "peak memory (MiB)", "threshold share of step",
             "threshold fast vs exact (ms)", "quantile search iterations")
STACKS = ("2x64x256", "2x128x512")
EXPECTED = sorted(
    [(m, "gpt-2x64", d) for m in TREE_ROWS for d in DTYPES]
    + [("Newton-Schulz standard (TFLOP/s)", s, d) for s in STACKS for d in DTYPES]
    + [("Newton-Schulz gram (TFLOP/s)", s, d) for s in STACKS for d in DTYPES])
# The smoke run trains two of the GPU config's runs (each compiles for seconds on a CPU): Muon
# clean and ROOT with bursts; every run's optimizer is checked by `test_lm_gpu_config_traces_every_run`.
LM_RUNS = ("Muon (optax) [none]", "ROOT [bursts]")


def _gpu_suite():
  sys.path.insert(0, str(SCRIPT.parent))
  try:
    return importlib.import_module("gpu_suite")
  finally:
    sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
  """``bash benchmarks/gpu_run.sh --quick OUT``: ``(OUT, stdout)``."""
  out = tmp_path_factory.mktemp("gpu_run")
  env = dict(os.environ, PYTHON=sys.executable, LM_FLAGS=f"--config.only '{','.join(LM_RUNS)}'")
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run(["bash", str(RUN), "--quick", str(out)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return out, proc.stdout


def _table(text: str) -> list[list[str]]:
  """The body rows of the one Markdown table in ``text``, as cells."""
  lines = [line for line in text.splitlines() if line.startswith("|")]
  assert len(lines) >= 2 and set(lines[1]) <= set("|- "), text
  return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def _is_positive_number(cell: str) -> bool:
  try:
    return float(cell) > 0
  except ValueError:
    return False


def test_quick_suite_fills_every_row(gpu_run):
  out, _ = gpu_run
  text = (out / "suite.md").read_text()
  assert text.startswith("GPU suite: ") and "jax " in text and "optax " in text and "root_optax " in text
  assert "2 interleaved process pairs" in text
  rows = _table(text)
  assert sorted(tuple(r[:3]) for r in rows) == EXPECTED
  assert not [r for r in rows if any("error" in cell for cell in r)], text
  for r in rows:
    numbers = r[3:6]  # value, baseline, ratio
    if r[0] == "peak memory (MiB)" and numbers == ["n/a"] * 3:
      continue  # no memory_stats() on this backend
    if r[0] == "quantile search iterations":
      # variant='paper' clips its momentum at a quantile: a first pass, >= 1 narrowing, the read.
      assert int(numbers[1]) >= 3 and int(numbers[0]) >= 0, r
      continue
    assert all(_is_positive_number(c) for c in numbers), r
  assert all("quantile search iterations" in r[6] for r in rows if r[0] == "threshold fast vs exact (ms)")
  assert all("over 2 of 2 interleaved process pairs" in r[6] for r in rows if r[0] == "step time (ms)")


def test_quick_lm_gpu_writes_table_curves_and_device(gpu_run):
  out, _ = gpu_run
  lm = out / "lm"
  with open(lm / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["run"], r["seed"]) for r in rows] == [(n, s) for n in LM_RUNS for s in ("0", "1")]
  assert all(math.isfinite(float(r["final_val"])) for r in rows)
  assert {r["noise"] for r in rows} == {"none", "bursts"}
  assert all(int(r["burst_steps"]) > 0 for r in rows if r["noise"] == "bursts")  # bursts happened
  table = (lm / "table.md").read_text()
  assert "Device: 1 x cpu (cpu)" in table and "compute dtype bfloat16" in table
  assert "### Robustness" in table and "damage" in table
  for name in ("curves.png", "robustness.png", "curves.csv"):
    assert (lm / name).stat().st_size > 0, name


def test_gpu_run_prints_one_report(gpu_run):
  out, stdout = gpu_run
  report = (out / "report.md").read_text()
  assert report.strip() in stdout
  assert report.startswith("# GPU run: ROOT vs Muon (--quick)")
  assert report.count("finished in") == 2  # both parts, within their time limits
  assert "Device: no nvidia-smi; JAX sees: 1 x cpu (cpu)" in report
  assert (out / "suite.md").read_text() in report
  assert "## LM: byte-level GPT at GPU scale" in report and "curves.png" in report


def test_device_draw_is_heavy_tailed():
  """The sampler GPU runs use (CPU runs take `_trees.make`): shape, dtype and Student-t(4) tails."""
  x = _gpu_suite().student_t4(jax.random.key(0), (400, 500), jnp.bfloat16, 2.0)
  assert x.shape == (400, 500) and x.dtype == jnp.bfloat16
  a = np.abs(np.asarray(x, np.float64)) / 2.0
  # Student-t(4): median |t| = 0.741, P(|t| > 4.604) = 0.01 (a normal's would be 4e-6).
  assert abs(np.median(a) - 0.741) < 0.02
  assert 0.008 < np.mean(a > 4.604) < 0.012


def test_search_counter_counts_only_the_quantile_search():
  """A chain of a non-search `lax.while_loop` (5 passes) and the search counts the search alone."""
  gpu_suite = _gpu_suite()
  dims = lambda tree: jax.tree.map(lambda x: optax.contrib.MuonDimensionNumbers(), tree)
  search = root_optax.soft_threshold_outliers(0.9, weight_dimension_numbers=dims)

  def other_loop_update(updates, state, params=None):
    del params
    n = jax.lax.while_loop(lambda c: c < 5, lambda c: c + 1, jnp.int32(0))
    return jax.tree.map(lambda u: u * n.astype(u.dtype) / 5, updates), state

  other = optax.GradientTransformation(lambda p: optax.EmptyState(), other_loop_update)
  grads = {"w": jax.random.normal(jax.random.key(0), (64, 96))}
  alone = gpu_suite.search_iterations(search, grads)
  assert alone >= 3  # the first pass, at least one narrowing pass, the read
  assert gpu_suite.search_iterations(optax.chain(other, search), grads) == alone
  assert gpu_suite.search_iterations(other, grads) == 0
  # And the count is the loop's own: a float64 numpy quantile is what the search found.
  clipped = search.update(grads, search.init(grads))[0]["w"]
  assert float(jnp.max(jnp.abs(clipped))) == pytest.approx(
      np.quantile(np.abs(np.asarray(grads["w"], np.float64)), 0.9), rel=1e-6)


def test_paired_takes_the_median_of_per_pair_ratios():
  gpu_suite = _gpu_suite()
  # Per pair: ROOT / Muon = 2.0, 1.0, 3.0; the ratio of the medians would be 2 / 3.
  rounds = [{"root": {"step_s": 2.0}, "muon": {"step_s": 1.0}},
            {"root": {"step_s": 4.0}, "muon": {"step_s": 4.0}},
            {"root": {"step_s": 6.0}, "muon": {"step_s": 2.0}},
            {"root": {"error": "error: skipped"}, "muon": {"step_s": 9.0}}]
  assert gpu_suite.paired(rounds, "step_s", 1e3) == (4000.0, 3000.0, 2.0)
  assert gpu_suite.paired(rounds[3:], "step_s") == ("error: skipped", 9.0, "n/a")


def test_lm_gpu_config_traces_every_run():
  """Every run of configs/lm_gpu.py takes an update step on the full-size model (traced, not run)."""
  from configs import lm_gpu  # pylint: disable=import-outside-toplevel
  from examples.lm import train  # pylint: disable=import-outside-toplevel
  config = lm_gpu.get_config()
  model = nnx.eval_shape(lambda: train.make_model(config, 0))
  params = nnx.state(model, nnx.Param)
  assert 30e6 <= sum(math.prod(p.shape) for p in jax.tree.leaves(params)) <= 100e6
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  assert model.blocks[0].fc.dtype == jnp.bfloat16  # bf16 compute, float32 parameters
  families = {(r.family, r.noise) for r in config.runs}
  assert {f for f, _ in families} == {"Muon (optax)", "ROOT", "ROOT paper", "ROOT AdaNewton", "AdamW"}
  assert {n for _, n in families} == {"none", "bursts"} and len(families) == len(config.runs) == 10
  assert next(r for r in config.runs if r.family == "ROOT").root.to_dict() == {}  # the default
  assert len(config.seeds) >= 2 and config.steps >= 1000
  seen = set()
  for run in config.runs:
    key = run.family
    if key in seen:
      continue
    seen.add(key)
    tx = optimizers.make_optimizer(run, config.optim, config.steps)
    updates = jax.eval_shape(lambda p, tx=tx: tx.update(p, tx.init(p), p)[0], params)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates)), run.name
  assert runtime.apply_quick(config).model.d_model == 128
