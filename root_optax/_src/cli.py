"""Command line: ``root-optax calibrate --shape 768x3072 ... --out table.json``.

Writes a coefficient table that `root_optax.load_coefficients` (and hence
``root(coefficients=path)``) reads, with per-shape diagnostics under ``meta``.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Optional

from root_optax._src import calibration
from root_optax._src import normalization as normalization_lib
from root_optax._src import spectra as spectra_lib

# What `--help` shows: plain text (the module docstring is reStructuredText).
_DESCRIPTION = (
    "root_optax's command line. 'root-optax calibrate --shape 768x3072 --out table.json' "
    "fits Newton-Schulz coefficients for each matrix shape and writes a coefficient table "
    "that root_optax.load_coefficients and root(ns_coeffs='table.json') read.")


def _progress(total: int):
  """A tqdm bar when tqdm is installed, else one printed line per shape."""
  try:
    import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:
    bar = None
  else:
    bar = tqdm.tqdm(total=total, unit="shape", file=sys.stderr)
  done = [0]

  def update(result: calibration.CalibrationResult):
    done[0] += 1
    text = (f"{result.shape[0]}x{result.shape[1]}: loss {result.loss:.3g}, "
            f"max gain {result.safety.envelope.max_value:.3f}, {result.seconds:.1f} s")
    if bar is None:
      print(f"[{done[0]}/{total}] {text}", file=sys.stderr, flush=True)
    else:
      bar.set_postfix_str(text)
      bar.update(1)
      if done[0] == total:
        bar.close()

  return update


def format_table_json(data: dict) -> str:
  """JSON of a table dict with one line per shape entry (readable diffs)."""
  lines = ["{"]
  items = list(data.items())
  for i, (key, value) in enumerate(items):
    comma = "," if i < len(items) - 1 else ""
    if isinstance(value, dict) and value:
      lines.append(f"  {json.dumps(key)}: {{")
      inner = [f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()]
      lines.append(",\n".join(inner))
      lines.append(f"  }}{comma}")
    else:
      lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
  lines.append("}")
  return "\n".join(lines) + "\n"


def _add_calibrate_parser(sub) -> None:
  """The ``calibrate`` command; its defaults are `calibration.CalibrationSettings`'s."""
  defaults = calibration.CalibrationSettings()
  p = sub.add_parser("calibrate", help="fit Newton-Schulz coefficients per matrix shape")
  p.add_argument("--shape", action="append", required=True,
                 help="a matrix shape like 768x3072 (repeat; orientation does not matter)")
  p.add_argument("--out", required=True, help="output JSON file")
  p.add_argument("--ns-steps", type=int, default=defaults.ns_steps)
  p.add_argument("--one-triple", action="store_true",
                 help="one (a, b, c) for all steps (paper style) instead of one per step")
  p.add_argument("--normalization", default=defaults.normalization,
                 choices=normalization_lib.CALIBRATION_NORMALIZATIONS)
  p.add_argument("--spectra", default=None,
                 help="real spectra recorded with SpectrumRecorder.save (.npz)")
  p.add_argument("--real-fraction", type=float, default=defaults.real_fraction,
                 help="share of real spectra in the objective (paper: 1:3 = 0.25)")
  p.add_argument("--prior-fraction", type=float, default=defaults.prior_fraction,
                 help="share of a log-uniform [prior-min, 1] spectrum (heavy-tailed real momenta)")
  p.add_argument("--prior-min", type=float, default=defaults.prior_min)
  p.add_argument("--seed", type=int, default=defaults.seed)
  p.add_argument("--num-steps", type=int, default=defaults.num_steps, help="optimiser iterations")
  p.add_argument("--num-values", type=int, default=defaults.num_values,
                 help="Gaussian singular values per shape")
  p.add_argument("--max-gain", type=float, default=defaults.max_gain,
                 help="safety band [0, max_gain] for the composed polynomial on [0, 1]")
  p.add_argument("--name", default=None, help="table name (default: the file name)")
  p.add_argument("--cache-dir", default=None, help="reuse results stored in this directory")


def _calibrate(args) -> int:
  spectra = spectra_lib.SpectrumRecorder.load(args.spectra) if args.spectra else None
  meta, bar = {}, _progress(len(args.shape))

  def progress(result: calibration.CalibrationResult):
    meta.setdefault(f"{result.shape[0]}x{result.shape[1]}", {
        "loss": result.loss, "max_gain": result.safety.envelope.max_value,
        "start": result.start, "seconds": round(result.seconds, 2)})
    bar(result)

  table = calibration.calibrate(
      args.shape, ns_steps=args.ns_steps, per_iteration=not args.one_triple,
      normalization=args.normalization, spectra=spectra, real_fraction=args.real_fraction,
      prior_fraction=args.prior_fraction, prior_min=args.prior_min,
      seed=args.seed, num_steps=args.num_steps, num_values=args.num_values, max_gain=args.max_gain,
      cache_dir=args.cache_dir, name=args.name or os.path.basename(args.out),
      progress=progress)
  data = table.to_json_dict()
  data["meta"] = meta
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  with open(args.out, "w") as f:
    f.write(format_table_json(data))
  print(f"wrote {len(table.shapes)} shapes to {args.out}", file=sys.stderr)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of the ``root-optax`` console script."""
  parser = argparse.ArgumentParser(prog="root-optax", description=_DESCRIPTION)
  sub = parser.add_subparsers(dest="command", required=True)
  _add_calibrate_parser(sub)
  args = parser.parse_args(argv)
  if args.command == "calibrate":
    return _calibrate(args)
  parser.error(f"unknown command {args.command!r}")
  return 2


if __name__ == "__main__":
  sys.exit(main())
