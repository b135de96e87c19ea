"""`benchmarks/gpu_suite.py --quick` runs end to end and fills every row of its one table."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"
DTYPES = ("float32", "bfloat16")
TREE_ROWS = ("step time (ms)", "compile time (s)", "peak memory (MiB)", "threshold share of step",
             "threshold fast vs exact (ms)")
STACKS = ("2x64x256", "2x128x512")
EXPECTED = sorted(
    [(m, "gpt-2x64", d) for m in TREE_ROWS for d in DTYPES]
    + [("Newton-Schulz standard (TFLOP/s)", s, d) for s in STACKS for d in DTYPES]
    + [("Newton-Schulz gram (TFLOP/s)", s, d) for s in STACKS for d in DTYPES])


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


def test_quick_suite_fills_every_row(tmp_path):
  out = tmp_path / "suite.md"
  proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("GPU suite: ") and "jax " in text and "optax " in text and "root_optax " in text
  assert text.strip() in proc.stdout
  rows = _table(text)
  assert sorted(tuple(r[:3]) for r in rows) == EXPECTED
  assert not [r for r in rows if any("error" in cell for cell in r)], text
  for r in rows:
    numbers = r[3:6]  # value, baseline, ratio
    if r[0] == "peak memory (MiB)" and numbers == ["n/a"] * 3:
      continue  # no memory_stats() on this backend
    assert all(_is_positive_number(c) for c in numbers), r
  assert all("while_loop iterations" in r[6] for r in rows if r[0] == "threshold fast vs exact (ms)")


def test_device_draw_is_heavy_tailed():
  """The sampler GPU runs use (CPU runs take `_trees.make`): shape, dtype and Student-t(4) tails."""
  sys.path.insert(0, str(SCRIPT.parent))
  try:
    import gpu_suite  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(SCRIPT.parent))
  x = gpu_suite.student_t4(jax.random.key(0), (400, 500), jnp.bfloat16, 2.0)
  assert x.shape == (400, 500) and x.dtype == jnp.bfloat16
  a = np.abs(np.asarray(x, np.float64)) / 2.0
  # Student-t(4): median |t| = 0.741, P(|t| > 4.604) = 0.01 (a normal's would be 4e-6).
  assert abs(np.median(a) - 0.741) < 0.02
  assert 0.008 < np.mean(a > 4.604) < 0.012
