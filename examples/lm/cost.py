r"""FLOPs of each run's training step and the wall time they predict on a device.

Compiles every run's jitted train step (as `examples.lm.train` builds it) for
the config's model and batch, reads XLA's ``compiled.cost_analysis()['flops']``
and predicts the whole job's wall time on a device of ``--tflops`` achieved
TFLOP/s with ``--overhead_ms`` of fixed cost per step (dispatch, the host
sync of the loss, launch-bound small kernels) and ``--compile_s`` per run's
first step::

  python -m examples.lm.cost --config configs/lm_gpu.py           # the GPU job's estimate
  python -m examples.lm.cost --config configs/lm_gpu.py --quick   # a few seconds

XLA counts one pass of a ``while`` loop's body (ROOT's quantile search runs
about 7), and a ``cond``'s branches once each; the counts are compiled on the
machine that runs this (the CPU by default), whose fusion differs slightly
from a GPU's. Writes ``cost.md`` to ``--workdir``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from absl import app
from absl import flags
from flax import nnx

from examples.common import data
from examples.common import optimizers
from examples.common import runtime
from examples.common import stats
from examples.lm import train

# Defaults of the prediction: see configs/lm_gpu.py's docstring for why these values.
TFLOPS, OVERHEAD_MS, COMPILE_S = 150.0, 3.0, 15.0


def step_flops(config: ml_collections.ConfigDict, run: ml_collections.ConfigDict) -> float:
  """XLA's FLOP count of one compiled train step of ``run`` (float)."""
  model = train.make_model(config, 0)
  tx = optimizers.make_optimizer(run, config.optim, config.steps)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = train.make_train_step(train._run_noise(config, run))  # pylint: disable=protected-access
  batch = jnp.zeros((config.batch_size, config.seq_len + 1), jnp.int32)
  compiled = step.lower(model, optimizer, batch, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per device
  return float(cost["flops"])


def estimate(config: ml_collections.ConfigDict, workdir: str, tflops: float = TFLOPS,
             overhead_ms: float = OVERHEAD_MS, compile_s: float = COMPILE_S) -> list[dict]:
  """Writes (and prints) ``cost.md``: per run, its FLOPs a step and the predicted time.

  Returns:
    One dict per run: ``run``, ``flops`` (a step), ``step_ms`` and ``seconds``
    (compile plus every seed's steps), predicted.
  """
  out = runtime.make_workdir(workdir)
  seeds, steps = len(config.seeds), int(config.steps)
  model = train.make_model(config, 0)
  params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  rows = []
  for run in runtime.selected_runs(config):
    flops = step_flops(config, run)
    step_ms = 1e3 * flops / (tflops * 1e12) + overhead_ms
    rows.append({"run": run.name, "flops": flops, "step_ms": step_ms,
                 "seconds": compile_s + seeds * steps * step_ms / 1e3})
    print(f"{run.name}: {flops / 1e9:.1f} GFLOP / step", flush=True)
  total = sum(r["seconds"] for r in rows)
  cells = [{"run": r["run"], "GFLOP / step": f"{r['flops'] / 1e9:.1f}",
            "predicted ms / step": f"{r['step_ms']:.2f}",
            "predicted s (all seeds)": f"{r['seconds']:.0f}"} for r in rows]
  text = "\n".join([
      f"## Cost of {config.name}: {params / 1e6:.1f} M parameters, batch {config.batch_size} x "
      f"{config.seq_len} bytes, {steps} steps x {seeds} seeds per run", "",
      f"FLOPs: XLA's cost analysis of each run's compiled train step on "
      f"{jax.devices()[0].device_kind}. Prediction: {tflops:g} TFLOP/s achieved, "
      f"{overhead_ms:g} ms fixed per step, {compile_s:g} s compile per run.", "",
      stats.format_table(cells, list(cells[0])), "",
      f"Predicted total: {total:.0f} s ({total / 60:.1f} min) for {len(rows)} runs "
      f"(vocabulary {data.VOCAB_SIZE}).", ""])
  print("\n" + text)
  (out / "cost.md").write_text(text)
  return rows


def _main() -> None:
  tflops = flags.DEFINE_float("tflops", TFLOPS, "Achieved TFLOP/s assumed for the prediction.")
  overhead = flags.DEFINE_float("overhead_ms", OVERHEAD_MS, "Fixed cost per step assumed (ms).")
  compile_s = flags.DEFINE_float("compile_s", COMPILE_S, "Compile time assumed per run (s).")
  app.run(runtime.make_main(
      "lm_gpu.py", lambda config, workdir: estimate(config, workdir, tflops.value, overhead.value,
                                                    compile_s.value)))


if __name__ == "__main__":  # flags only when run: importing this module defines none
  _main()
