"""bfloat16 Newton-Schulz: does ROOT train as well with ``compute_dtype=jnp.bfloat16``?

`root()`'s defaults with the Newton-Schulz iterations in float32 (the
update's dtype) and in bfloat16 (the normalisation accumulated in float32):
in the standard form (``ns_method='auto'`` below float32) and in the Gram
form for every matrix, restarted once (``ns_method='gram'``). The same
model, data, schedule, rate and seeds as ``configs/lm.py``; paired by seed.
On a CPU the bfloat16 run is slower (no native bfloat16 matmul); the question
here is the loss. Regenerate with::

  python -m examples.lm.main --config configs/lm_bf16.py
"""

import ml_collections

from configs import lm
from configs._runs import run


def get_config() -> ml_collections.ConfigDict:
  c = lm.base_config()
  c.name = "lm_bf16"
  c.title = "Newton-Schulz in bfloat16 (byte-level LM)"
  c.baseline = "ROOT float32"
  c.runs = (
      run("ROOT float32", "root", lm.LR["root"], root={}),
      run("ROOT bf16", "root", lm.LR["root"], root={"compute_dtype": "bfloat16"}),
      run("ROOT bf16 Gram form", "root", lm.LR["root"],
          root={"compute_dtype": "bfloat16", "ns_method": "gram"}),
  )
  return c
