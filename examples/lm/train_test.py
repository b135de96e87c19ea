"""Smoke test of the LM example: `--quick` on two runs x 3 seeds, in workers and in one process."""

import csv
import math

import jax.numpy as jnp
import pytest

import root_optax

MODULE = "examples.lm.main"

LM_RUNS = ("Muon (optax)", "ROOT")


@pytest.fixture(scope="module")
def lm_quick(tmp_path_factory, run_quick):
  """`--quick` on two runs x the default 3 seeds, in the default 2 worker processes."""
  workdir = tmp_path_factory.mktemp("lm_quick")
  stdout, rows = run_quick(MODULE, ["--config.only", ",".join(LM_RUNS)], workdir)
  return workdir, stdout, rows


def test_train_lm_quick(lm_quick):
  workdir, stdout, rows = lm_quick
  # summary.csv: one row per (run, seed), run-major.
  assert [(r["run"], r["seed"]) for r in rows] == [(n, str(s)) for n in LM_RUNS for s in (0, 1, 2)]
  for r in rows:
    # Learned something: below the uniform byte loss ln(256) = 5.545 nats.
    assert float(r["final_val"]) < math.log(256) - 1.0
    assert float(r["final_train"]) < math.log(256) - 1.0
    assert 0.1 < float(r["ms_per_step"]) < 1e4  # a real step time, never 0
  for name in LM_RUNS:
    mine = [r for r in rows if r["run"] == name]
    assert len({r["final_val"] for r in mine}) == 3  # the seeds really differ (init, batches)
    # The step time leaves out the first step, which compiled (seed 0 comes first).
    assert float(mine[0]["first_step_s"]) * 1e3 > 5 * float(mine[0]["ms_per_step"])
  table = (workdir / "table.md").read_text()
  assert table in stdout  # the printed table is the one written
  assert "mean ± std over 3 seeds (0, 1, 2)" in table
  assert "| ROOT | 3 |" in table and "Δ val vs Muon (optax)" in table and "(baseline)" in table
  root_row = next(line for line in table.splitlines() if line.startswith("| ROOT |"))
  assert root_row.count("±") == 5  # train, val, ms, and the two paired differences
  assert "2 single-threaded worker processes" in table
  assert (workdir / "curves.png").stat().st_size > 0
  with open(workdir / "curves.csv") as f:
    curves = list(csv.DictReader(f))
  assert len(curves) == 2 * 3 * 20  # quick mode: 20 steps per run and seed
  # root_optax.diagnostics read the nnx.Optimizer state of every ROOT run.
  with open(workdir / "diagnostics.csv") as f:
    diag = list(csv.DictReader(f))
  assert {r["run"] for r in diag} == {"ROOT"} and {r["seed"] for r in diag} == {"0", "1", "2"}
  assert any(r["key"].endswith("clipped_fraction") for r in diag)
  assert (workdir / "diagnostics.png").stat().st_size > 0


def _nnx_root_state():
  """``(root_optax.diagnostics figures, traces of the step)`` after 3 steps of
  ``root()`` in an ``nnx.Optimizer``, as `examples/lm/train.py` uses it."""
  from flax import nnx  # noqa: PLC0415
  model = nnx.Linear(16, 32, use_bias=False, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, root_optax.root(1e-2), wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, x):
    traces.append(1)
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    optimizer.update(model, grads)

  for i in range(3):
    step(model, optimizer, jnp.full((4, 16), 1.0 + i))
  return root_optax.diagnostics(optimizer.opt_state), len(traces)


def test_root_state_round_trips_through_nnx_optimizer():
  """`root()`'s state keeps its types in an ``nnx.Optimizer``: the step is
  traced (and compiled) once, and `root_optax.diagnostics` reads the state
  after any number of steps (what `examples/lm/train.py` logs)."""
  figures, traces = _nnx_root_state()
  assert traces == 1, f"the nnx step was traced {traces} times in 3 steps"
  assert any(k.endswith("clipped_fraction") for k in figures), figures


def test_train_lm_in_process_matches_workers(lm_quick, run_quick, tmp_path):
  """Everything in one process (the other seed order, a run trained before
  another on the same seed) gives bit-identical losses to the worker
  processes: no warm start, no dependence on job order or process."""
  _, _, parallel = lm_quick
  _, serial = run_quick(MODULE, ["--config.only", "ROOT,Muon (optax)",
                                 "--config.seeds", "(2, 0)", "--config.workers", "0"], tmp_path)
  key = lambda r: (r["run"], r["seed"])
  assert sorted(map(key, serial)) == sorted((n, s) for n in LM_RUNS for s in ("0", "2"))
  reference = {key(r): r for r in parallel}
  for r in serial:
    for metric in ("final_train", "final_val"):
      assert r[metric] == reference[key(r)][metric], (key(r), metric)
  assert "this process, single-threaded on one core" in (tmp_path / "table.md").read_text()


def test_report_merges_parts_into_the_same_table_and_gaps(lm_quick, tmp_path):
  """`examples.lm.report` on the quick run split by seed gives the run's own table."""
  from configs import lm  # pylint: disable=import-outside-toplevel
  from examples.common import runtime  # pylint: disable=import-outside-toplevel
  from examples.lm import report  # pylint: disable=import-outside-toplevel
  workdir, _, _ = lm_quick
  config = runtime.apply_quick(lm.get_config())
  config.only = ",".join(LM_RUNS)
  parts = []
  for name, seeds in (("a", {"0"}), ("b", {"1", "2"})):
    part = tmp_path / name
    part.mkdir()
    for file in ("summary.csv", "curves.csv"):
      with open(workdir / file) as f:
        rows = list(csv.DictReader(f))
      runtime.write_csv(part / file, [r for r in rows if r["seed"] in seeds])
    parts.append(part)
  config.gap_steps = (10, config.steps)
  report.merge(config, str(tmp_path / "merged"), parts)
  merged = (tmp_path / "merged" / "table.md").read_text()
  original = (workdir / "table.md").read_text()
  table = lambda text: [l for l in text.splitlines() if l.startswith("| ROOT") or l.startswith("| Muon")]
  assert table(merged)[:2] == table(original)[:2]  # the same rows, digit for digit
  gaps = merged.split("### Gap to Muon (optax) over the run")[1]
  root_final = [l for l in table(original) if l.startswith("| ROOT")][0].split(" | ")[5]
  row = [l for l in gaps.splitlines() if l.startswith("| ROOT")][0]
  assert row.split(" | ")[-1].rstrip(" |") == root_final  # the last step's gap is the final Δ
