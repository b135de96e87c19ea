"""Collective statistics of a compiled, partitioned XLA program (HLO text).

Used by `benchmarks/sharding.py` and the sharding tests to count what a
sharded optimizer step sends between devices.
"""

import math
import re

_COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "collective-permute", "reduce-scatter")
_HLO_COLLECTIVE = re.compile(
    r"=\s+(.*?)\s+(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(")
_HLO_ARRAY = re.compile(r"\b(pred|[a-z]+(\d+))\[([0-9,]*)\]")


def collective_stats(hlo_text: str) -> dict[str, tuple[int, int]]:
  """Counts the collectives of a compiled (partitioned) HLO module and their bytes.

  Args:
    hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

  Returns:
    ``{op: (count, bytes)}`` per collective kind, where ``bytes`` sums the
    per-device result sizes (what each device receives, up to the collective's
    own algorithm). Collectives inside a loop body are counted once.
  """
  stats = {}
  for result, op in _HLO_COLLECTIVE.findall(hlo_text):
    nbytes = 0
    for _, bits, dims in _HLO_ARRAY.findall(result):
      nbytes += math.prod(int(d) for d in dims.split(",") if d) * max(int(bits or 8) // 8, 1)
    count, total = stats.get(op, (0, 0))
    stats[op] = (count + 1, total + nbytes)
  return stats
