"""Smoke runs of the benchmarks that no other test starts: every table comes out whole."""

import pathlib
import subprocess
import sys

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


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
