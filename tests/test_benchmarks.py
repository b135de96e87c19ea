"""Smoke runs (``--quick``) of the benchmarks that no other test starts: every table comes
out whole, with the numbers that can be checked against an independent count."""

import inspect
import json
import os
import pathlib
import subprocess
import sys

import optax
import pytest

import root_optax

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
SMOKE_TREE = "gpt-2x64"  # benchmarks/_trees.py's tree for these smoke runs


def _tables(text: str) -> list[list[list[str]]]:
  """The Markdown tables in ``text``: rows of cells, header first."""
  tables, current = [], []
  for line in text.splitlines() + [""]:
    if line.startswith("|"):
      current.append([cell.strip() for cell in line.strip("|").split("|")])
    elif current:
      tables.append([row for row in current if set("".join(row)) - set("- ")])
      current = []
  return tables


def test_bf16_quick_fills_its_four_tables():
  proc = subprocess.run([sys.executable, "bf16.py", "--quick", "--repeats", "1"], cwd=BENCHMARKS,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  tables = _tables(proc.stdout)
  assert [len(t) for t in tables] == [3, 3, 4, 2], proc.stdout  # Fig. 2: steps 1, 2, 4
  for table in tables:
    assert len({len(row) for row in table}) == 1
    assert all(cell and cell != "nan" for row in table for cell in row), table
  # Without its restart the bf16 Gram form blows up on the ill-conditioned inputs.
  header, *rows = tables[1]
  unrestarted = header.index("bf16 Gram, no restart")
  restarted = header.index("bf16 Gram + restart")
  for row in rows:
    assert float(row[unrestarted].split()[0]) > 2 * float(row[restarted].split()[0]), row


def _run_json(script: str, tmp_path, *args: str, env=None) -> tuple[str, object]:
  """Runs ``benchmarks/<script> *args --json`` and returns (stdout, the JSON's results)."""
  out = tmp_path / f"{script}.json"
  proc = subprocess.run([sys.executable, script, *args, "--json", str(out)], cwd=BENCHMARKS,
                        capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  payload = json.loads(out.read_text())
  return proc.stdout, payload.get("results", payload)


def _matrix_and_leaf_counts(layers: int) -> tuple[int, int]:
  """GPT-2 layout (`_trees`): 4 kernels a block; 12 leaves a block, plus wte, wpe, ln_f."""
  return 4 * layers, 12 * layers + 4


def test_step_time_quick_times_root_its_standard_form_and_muon(tmp_path):
  stdout, [row] = _run_json("step_time.py", tmp_path, "--quick", "--trees", SMOKE_TREE,
                            "--repeats", "1")
  assert (row["tree"], row["matrices"], row["leaves"]) == (SMOKE_TREE, *_matrix_and_leaf_counts(2))
  for key in ("root_step_s", "muon_step_s", "root_std_step_s", "bare_ns_s", "root_compile_s",
              "muon_compile_s"):
    assert 0 < row[key] < 60, (key, row[key])
  # One repeat: each ratio is the ratio of the single timings.
  assert row["step_ratio"] == pytest.approx(row["root_step_s"] / row["muon_step_s"])
  assert row["std_step_ratio"] == pytest.approx(row["root_std_step_s"] / row["muon_step_s"])
  [table] = _tables(stdout)
  assert "std_step_ratio" in table[0] and len(table) == 2


def test_stage_cost_quick_runs_each_variant_in_its_own_process(tmp_path):
  _, rows = _run_json("stage_cost.py", tmp_path, "--quick", "--trees", SMOKE_TREE,
                      "--variants", "default", "--repeats", "1")
  assert [r["variant"] for r in rows] == ["default", "optax Muon"]
  muon = rows[1]
  assert muon["step_vs_muon"] == 1.0 and muon["compile_vs_muon"] == 1.0
  default = rows[0]
  assert default["step_vs_muon"] == pytest.approx(default["step_s"] / muon["step_s"])
  assert default["compile_s"] > 0 and default["compile_cpu_s"] > 0


def test_threshold_quick_fast_search_is_exact(tmp_path):
  _, rows = _run_json("threshold.py", tmp_path, "--quick", "--shapes", "64x64,64x256",
                      "--batch", "2", "--repeats", "1")
  assert [r["shape"] for r in rows] == ["2x64x64", "2x64x256"]
  for r in rows:
    # Against numpy.quantile in float64: exact order statistics (no entry between the two).
    assert r["exact_rank_error"] == 0 and r["fast_rank_error"] == 0, r
    assert r["loose_rank_error"] <= 1e-3 and r["exact_rel_error"] < 1e-5, r
    assert all(r[f"{k}_ms"] > 0 for k in ("exact", "fast", "loose", "ns"))


def test_memory_quick_counts_the_state_bytes(tmp_path):
  _, rows = _run_json("memory.py", tmp_path, "--quick", "--trees", SMOKE_TREE)
  root, muon = rows
  assert (root["optimizer"], muon["optimizer"]) == ("root", "muon")
  # gpt-2x64 (vocab 512, context 128) in float32, counted from its layout here.
  d, layers = 64, 2
  block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
  params = 4 * (512 * d + 128 * d + 2 * d + layers * block)
  assert root["params_MB"] == muon["params_MB"] == pytest.approx(params / 2**20)
  # Muon keeps one momentum buffer a matrix; ROOT adds a few scalars a matrix.
  assert muon["matrix_state_over_matrix_params"] == pytest.approx(1.0, abs=1e-3)  # + a count
  assert 1.0 <= root["matrix_state_over_matrix_params"] < 1.05
  assert root["peak_MB"] > root["params_MB"] and muon["peak_MB"] > muon["params_MB"]


def test_sharding_quick_compares_matched_optimizers(tmp_path):
  # Without the persistent cache: the collective counts are read from the compiled HLO.
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  stdout, result = _run_json("sharding.py", tmp_path, "--quick", env=env)
  assert (result["layers"], result["d_model"], result["devices"]) == (1, 64, 8)
  variants = result["variants"]
  assert set(variants) == {"xla_default", "sharded", "optax_muon"}
  assert variants["xla_default"]["ratio_to_xla_default"] == 1.0
  for name, v in variants.items():
    assert len(v["times_s"]) == 2 and v["median_s"] > 0, name
  # The sharded path moves whole matrices by all-to-all instead of gathering each iteration.
  gathered = lambda v: v["collectives"].get("all-gather", {"bytes": 0})["bytes"]
  assert gathered(variants["sharded"]) < gathered(variants["xla_default"]) / 10
  assert variants["sharded"]["collectives"]["all-to-all"]["count"] > 0
  assert "optax_muon" in stdout


def test_sharding_benchmark_gives_every_variant_the_same_settings():
  """The settings whose defaults differ between root() and optax's Muon are passed to all."""
  sys.path.insert(0, str(BENCHMARKS))
  try:
    import _trees  # noqa: PLC0415  (not sharding.py: it sets XLA_FLAGS at import)
  finally:
    sys.path.remove(str(BENCHMARKS))
  source = (BENCHMARKS / "sharding.py").read_text()
  assert "MATCHED = _trees.MATCHED" in source and source.count("**MATCHED)") == 3
  root_defaults = inspect.signature(root_optax.root).parameters
  muon_defaults = inspect.signature(optax.contrib.muon).parameters
  differing = {k for k in muon_defaults if k in root_defaults
               and k not in ("learning_rate", "ns_coeffs", "preconditioning")
               and root_defaults[k].default != muon_defaults[k].default}
  assert differing <= set(_trees.MATCHED), differing - set(_trees.MATCHED)
  assert all(root_defaults[k].default in (v, None) for k, v in _trees.MATCHED.items())


def test_ns_steps_quick_fills_both_tables(tmp_path):
  stdout, results = _run_json("ns_steps.py", tmp_path, "--quick")
  [gauss] = results["gaussian"]
  assert gauss["shape"] == "128x128" and set(gauss) == {"shape", "Muon 5", "Muon 4", "auto 3"}
  # Muon's triple at 5 steps peaks at 1.202 on [0, 1] (tests/test_polynomials.py).
  assert gauss["Muon 5"]["max"] == pytest.approx(1.202, abs=1e-3)
  assert gauss["auto 3"]["max"] <= 1.5 and gauss["auto 3"]["min"] >= 0
  assert gauss["Muon 5"]["table1"] < gauss["Muon 4"]["table1"]
  assert {r["shape"] for r in results["momenta"]} == {"32x10", "64x32"}
  tables = _tables(stdout)
  assert [len(t) for t in tables] == [2, 3], stdout
