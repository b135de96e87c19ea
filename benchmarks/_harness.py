"""Timing, tables and JSON output shared by the benchmarks."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import jax


def parser(description: str, repeats: int) -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--quick", action="store_true", help="small trees / shapes, a few seconds each")
  p.add_argument("--repeats", type=int, default=repeats, help="timed runs per variant (median reported)")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
  return p


def block(x):
  return jax.block_until_ready(x)


def timed(fn: Callable[[], object]) -> float:
  """Seconds of one call, waiting for its result."""
  start = time.perf_counter()
  block(fn())
  return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
  """Times each function ``repeats`` times, alternating between them.

  Alternating spreads load changes on a shared machine over all variants
  alike; report medians and ratios of medians.
  """
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(timed(fn))
  return times


def median(xs) -> float:
  return float(statistics.median(xs))


def paired_ratio(num: list[float], den: list[float]) -> float:
  """Median over repeats of ``num[i] / den[i]`` (each pair ran back to back)."""
  return median([a / b for a, b in zip(num, den)])


def machine() -> dict:
  return {
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "devices": [str(d) for d in jax.devices()],
      "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
  }


def fmt(v) -> str:
  if isinstance(v, float):
    if v == 0 or 1e-3 <= abs(v) < 1e5:
      return f"{v:.4g}"
    return f"{v:.3e}"
  return str(v)


def print_table(rows: list[dict], columns: list[str], title: str = "") -> None:
  """Prints ``rows`` (dicts) as a Markdown table of ``columns``."""
  if title:
    print(f"\n### {title}\n")
  cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
  print(line(columns))
  print("| " + " | ".join("-" * w for w in widths) + " |")
  for row in cells:
    print(line(row))


def write_json(path: str | None, name: str, args, results) -> None:
  if not path:
    return
  payload = {"benchmark": name, "args": vars(args), "machine": machine(), "results": results}
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, default=str)
  print(f"\nwrote {path}")
