"""`examples.lm.cost`: XLA's FLOP count of a train step against the transformer's own count."""

import jax
from flax import nnx

from configs import lm_gpu
from examples.common import runtime
from examples.lm import cost
from examples.lm import train


def test_step_flops_match_the_model_and_predict_the_time(tmp_path):
  config = runtime.apply_quick(lm_gpu.get_config())
  config.only = "AdamW [none]"
  rows = cost.estimate(config, str(tmp_path), tflops=1.0, overhead_ms=2.0, compile_s=5.0)
  assert [r["run"] for r in rows] == ["AdamW [none]"]
  model = train.make_model(config, 0)
  n = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  # 6 FLOPs per weight and token for the matmuls (the embedding is a lookup, no matmul), plus
  # attention's 4 batched matmuls of 2 B T^2 d forward and twice that backward; the rest (softmax,
  # norms, AdamW) is elementwise, a few percent here.
  b, t, d = config.batch_size, config.seq_len, config.model.d_model
  matmuls = 6 * (n - model.embed.embedding.size) * b * t + 3 * 4 * b * t * t * d * config.model.num_layers
  assert 1.0 <= rows[0]["flops"] / matmuls <= 1.15, rows[0]["flops"] / matmuls
  # 1 TFLOP/s and 2 ms a step: the prediction is the arithmetic of the docstring.
  step_ms = rows[0]["flops"] / 1e9 + 2.0
  assert abs(rows[0]["step_ms"] - step_ms) < 1e-9
  assert abs(rows[0]["seconds"] - (5.0 + len(config.seeds) * config.steps * step_ms / 1e3)) < 1e-9
  text = (tmp_path / "cost.md").read_text()
  assert "| AdamW [none] |" in text and "Predicted total:" in text
