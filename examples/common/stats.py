"""Seeded statistics and the Markdown tables every LM claim is built from.

Every LM claim is over seeds: seed s fixes the initialisation, the batch order
and the gradient corruption of *every* run, so runs are paired by seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def seed_stats(values: Sequence[float]) -> dict:
  """``{'n', 'mean', 'std'}`` over seeds; ``std`` is the sample std (ddof 1),
  NaN for a single seed."""
  v = np.asarray(values, dtype=np.float64)
  std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
  return {"n": len(v), "mean": float(v.mean()) if len(v) else math.nan, "std": std}


def paired_difference(values: dict, base: dict) -> dict:
  """Mean of ``values[s] - base[s]`` over the seeds ``s`` both have, its
  standard error (std of the differences / sqrt(n)) and ``significant``
  (|mean| > 2 SE; never for fewer than 2 seeds)."""
  seeds = [s for s in values if s in base]
  diffs = np.asarray([values[s] - base[s] for s in seeds], dtype=np.float64)
  stats = seed_stats(diffs)
  se = stats["std"] / math.sqrt(stats["n"]) if stats["n"] > 1 else math.nan
  significant = bool(stats["n"] > 1 and abs(stats["mean"]) > 2 * se)
  return {"n": stats["n"], "mean": stats["mean"], "se": se, "significant": significant}


def _by_seed(rows: Sequence[dict], key: str) -> dict:
  return {r["seed"]: float(r[key]) for r in rows}


def _family(row: dict) -> str:
  return row.get("family") or row["run"]


def aggregate_runs(summaries: Sequence[dict], baseline: str = "",
                   metrics: Sequence[str] = ("final_train", "final_val", "ms_per_step"),
                   paired: Sequence[str] = ("final_val", "final_train")) -> list[dict]:
  """One row per run (in first-seen order) from per-seed summaries.

  Args:
    summaries: Per-(run, seed) dicts with ``run``, ``seed``, ``noise`` and the
      metrics (and optionally ``family``).
    baseline: A run or family name; each run is compared, seed by seed, with
      the baseline run of the same ``noise`` kind. Empty: no comparison.
    metrics: Keys summarised as ``<key>_mean`` / ``<key>_std``.
    paired: Keys compared with the baseline as ``d_<key>_mean``, ``d_<key>_se``,
      ``d_<key>_sig`` (run - baseline).

  Returns:
    Dicts with ``run``, ``family``, ``noise``, ``seeds`` (the seeds, sorted),
    ``n`` and the statistics above.
  """
  groups: dict[str, list[dict]] = {}
  for s in summaries:
    groups.setdefault(s["run"], []).append(s)
  base_of = {}
  for name, rows in groups.items():
    if baseline and baseline in (name, _family(rows[0])):
      base_of.setdefault(rows[0].get("noise", "none"), rows)
  out = []
  for name, rows in groups.items():
    row = {"run": name, "family": _family(rows[0]), "noise": rows[0].get("noise", "none"),
           "seeds": sorted(r["seed"] for r in rows), "n": len(rows)}
    for key in metrics:
      stats = seed_stats([float(r[key]) for r in rows])
      row[f"{key}_mean"], row[f"{key}_std"] = stats["mean"], stats["std"]
    base = base_of.get(row["noise"])
    row["is_baseline"] = base is rows
    if base is not None and base is not rows:
      for key in paired:
        d = paired_difference(_by_seed(rows, key), _by_seed(base, key))
        row[f"d_{key}_mean"], row[f"d_{key}_se"], row[f"d_{key}_sig"] = (
            d["mean"], d["se"], d["significant"])
    out.append(row)
  return out


def robustness_rows(summaries: Sequence[dict], baseline: str = "") -> list[dict]:
  """One row per (``family``, noise kind) of the robustness experiment.

  ``val_mean`` / ``val_std``: final validation loss over seeds. For a noisy
  kind, ``damage_*``: the paired (per-seed) increase over the same family's
  clean run (mean, SE, significant), and against the ``baseline`` family at
  the same kind: ``ratio`` = mean damage / the baseline's mean damage (NaN
  unless the baseline's damage is positive and exceeds 2 SE) and
  ``vs_base_*`` = paired (damage - baseline's damage).
  """
  cell: dict[tuple, dict] = {}
  order: list[tuple] = []
  for s in summaries:
    k = (_family(s), s["noise"])
    if k not in cell:
      order.append(k)
    cell.setdefault(k, {})[s["seed"]] = float(s["final_val"])
  damage = {}
  for fam, kind in order:
    if kind != "none" and (fam, "none") in cell:
      clean = cell[(fam, "none")]
      damage[(fam, kind)] = {s: v - clean[s] for s, v in cell[(fam, kind)].items() if s in clean}
  rows = []
  for fam, kind in order:
    stats = seed_stats(list(cell[(fam, kind)].values()))
    row = {"family": fam, "noise": kind, "n": stats["n"],
           "val_mean": stats["mean"], "val_std": stats["std"]}
    if (fam, kind) in damage:
      d = paired_difference(damage[(fam, kind)], {s: 0.0 for s in damage[(fam, kind)]})
      row.update(damage_mean=d["mean"], damage_se=d["se"], damage_sig=d["significant"])
      base = damage.get((baseline, kind))
      if base is not None and fam != baseline:
        b = paired_difference(base, {s: 0.0 for s in base})
        # A ratio only means something when the baseline is clearly damaged.
        row["ratio"] = d["mean"] / b["mean"] if b["significant"] and b["mean"] > 0 else math.nan
        row["ratio_se"] = ratio_se(damage[(fam, kind)], base) if math.isfinite(row["ratio"]) else math.nan
        v = paired_difference(damage[(fam, kind)], base)
        row.update(vs_base_mean=v["mean"], vs_base_se=v["se"], vs_base_sig=v["significant"])
    rows.append(row)
  return rows


def ratio_se(values: dict, base: dict) -> float:
  """Standard error of ``mean(values) / mean(base)`` over the seeds both have
  (delta method, paired: the two means' covariance counts); NaN for < 2 seeds."""
  seeds = [s for s in values if s in base]
  if len(seeds) < 2:
    return math.nan
  x = np.asarray([values[s] for s in seeds], dtype=np.float64)
  y = np.asarray([base[s] for s in seeds], dtype=np.float64)
  r = x.mean() / y.mean()
  cov = np.cov(x, y, ddof=1)
  var = (cov[0, 0] + r * r * cov[1, 1] - 2 * r * cov[0, 1]) / len(seeds) / y.mean() ** 2
  return float(np.sqrt(max(var, 0.0)))


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
  """``'1.2345 ± 0.0123'`` (``'1.2345'`` when the std is undefined)."""
  if not math.isfinite(mean):
    return "n/a"
  return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def fmt_diff(mean: float, se: float, significant: bool, digits: int = 4) -> str:
  """``'+0.0123 ± 0.0040 *'``: a paired difference ± SE, ``*`` when |d| > 2 SE."""
  if not math.isfinite(mean):
    return "n/a"
  text = f"{mean:+.{digits}f}" + (f" ± {se:.{digits}f}" if math.isfinite(se) else "")
  return text + (" *" if significant else "")


def seeds_phrase(seeds: Sequence[int]) -> str:
  seeds = list(seeds)
  return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def format_aggregate(rows: Sequence[dict], baseline: str = "") -> str:
  """The Markdown table of `aggregate_runs` rows."""
  has_diff = any("d_final_val_mean" in r for r in rows)
  columns = ["run", "seeds", "final train", "final val", "ms / step"]
  if has_diff:
    columns += [f"Δ val vs {baseline}", f"Δ train vs {baseline}"]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for r in rows:
    cells = [r["run"], str(r["n"]), fmt_mean_std(r["final_train_mean"], r["final_train_std"]),
             fmt_mean_std(r["final_val_mean"], r["final_val_std"]),
             fmt_mean_std(r["ms_per_step_mean"], r["ms_per_step_std"], 1)]
    if has_diff:
      for key in ("final_val", "final_train"):
        if f"d_{key}_mean" in r:
          cells.append(fmt_diff(r[f"d_{key}_mean"], r[f"d_{key}_se"], r[f"d_{key}_sig"]))
        else:
          cells.append("(baseline)" if r.get("is_baseline") else "—")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_robustness(rows: Sequence[dict], baseline: str = "") -> str:
  """The Markdown table of `robustness_rows`."""
  columns = ["family", "noise", "seeds", "final val", "damage (noisy − clean)"]
  if baseline:
    columns += [f"damage / {baseline}'s", f"damage − {baseline}'s"]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for r in rows:
    ratio = r.get("ratio", math.nan)
    cells = [r["family"], r["noise"], str(r["n"]), fmt_mean_std(r["val_mean"], r["val_std"]),
             fmt_diff(r["damage_mean"], r["damage_se"], r["damage_sig"]) if "damage_mean" in r else ""]
    if baseline:
      ratio_se_ = r.get("ratio_se", math.nan)
      cells += [(f"{ratio:.3f}" + (f" ± {ratio_se_:.3f}" if math.isfinite(ratio_se_) else ""))
                if math.isfinite(ratio) else "",
                fmt_diff(r["vs_base_mean"], r["vs_base_se"], r["vs_base_sig"])
                if "vs_base_mean" in r else ""]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
  """A Markdown table of ``rows`` (floats with 4 decimals)."""
  fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
  return "\n".join(lines)


def gaps_over_steps(histories: Sequence[dict], baseline: str, steps: Sequence[int]) -> str:
  """Markdown table: each family's paired Δ validation loss vs ``baseline`` at ``steps``.

  Args:
    histories: Per-step rows (``run``, ``seed``, ``step``, ``val_loss`` where
      evaluated), with ``family`` and ``noise`` added.
    baseline: The family every other one is compared with, at the same noise.
    steps: The steps to report (each must be an evaluation step).

  Returns:
    One row per (family, noise) other than the baseline: ``Δ`` mean ± SE per
    step (``*``: > 2 SE).
  """
  val: dict = {}
  for r in histories:
    if r.get("val_loss") not in (None, "") and r["step"] in steps:
      val.setdefault((r["family"], r["noise"], r["step"]), {})[r["seed"]] = float(r["val_loss"])
  cells = list(dict.fromkeys((f, n) for f, n, _ in val))
  columns = ["family", "noise"] + [f"Δ val at step {s}" for s in steps]
  lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
  for family, noise in cells:
    if family == baseline:
      continue
    row = [family, noise]
    for s in steps:
      base = val.get((baseline, noise, s))
      mine = val.get((family, noise, s))
      d = paired_difference(mine, base) if mine and base else None
      row.append(fmt_diff(d["mean"], d["se"], d["significant"]) if d else "n/a")
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)
