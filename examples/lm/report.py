r"""The tables and plots of an LM experiment, from runs trained in parts.

A long experiment can be trained as several invocations of `examples.lm.main`
(``--config.only`` and ``--config.seeds`` pick the part, each into its own
``--workdir``); this merges their ``summary.csv`` and ``curves.csv`` and writes
the experiment's report (``table.md``, ``curves.png``...) as one run would::

  python -m examples.lm.report --config configs/lm_long.py --workdir runs/lm_long \
      --parts runs/lm_long_a,runs/lm_long_b
"""

from __future__ import annotations

import csv
import pathlib

from absl import app
from absl import flags

from examples.common import runtime
from examples.lm import train

_PARTS = flags.DEFINE_list("parts", [], "Workdirs of the parts to merge.")


def _number(value: str):
  """A CSV cell back as int, float, or the string it was."""
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def _read(path: pathlib.Path) -> list[dict]:
  with open(path, newline="") as f:
    return [{k: _number(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def merge_and_report(config, workdir: str) -> list[dict]:
  """`merge` of the ``--parts`` workdirs."""
  if not _PARTS.value:
    raise app.UsageError("--parts: the workdirs to merge")
  return merge(config, workdir, _PARTS.value)


def merge(config, workdir: str, parts) -> list[dict]:
  """Reads every part's summaries and curves and writes the merged report to ``workdir``."""
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  summaries, histories = [], []
  for part in map(pathlib.Path, parts):
    summaries += _read(part / "summary.csv")
    histories += _read(part / "curves.csv")
  by_run: dict = {}
  for row in histories:
    by_run.setdefault((row["run"], row["seed"]), []).append(row)
  results = [{"summary": s, "history": by_run.get((s["run"], s["seed"]), []), "diagnostics": []}
             for s in summaries]
  runtime.write_csv(out / "summary.csv", summaries)
  runtime.write_csv(out / "curves.csv", histories)
  runs = [r for r in runtime.selected_runs(config)
          if any(s["run"] == r.name for s in summaries)]
  train.plot_curves(results, runs, config, out / "curves.png")
  train.report(config, summaries, out, ["curves.csv", "summary.csv", "table.md", "curves.png"])
  if config.get("gap_steps") and config.get("baseline"):
    train.report_gaps(config, results, out)
  return summaries


if __name__ == "__main__":
  app.run(runtime.make_main("lm.py", merge_and_report))
