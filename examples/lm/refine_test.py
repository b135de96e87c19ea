"""Tests of `examples.lm.refine`: the recorded Newton-Schulz input, and a `--quick` run."""

import csv
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import root_optax
from configs import lm_refine
from examples.common import runtime
from examples.lm import refine
from examples.lm import train
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import polynomials

MODULE = "examples.lm.refine"
QUICK = runtime.apply_quick(lm_refine.get_config())
VARIANTS = [name for name, *_ in QUICK.variants]
REAL_ONLY = next(name for name, _, real_fraction in QUICK.variants if real_fraction == 1.0)


def test_nesterov_input_is_what_trace_outputs():
  beta = 0.9
  tx = optax.trace(beta, nesterov=True)
  grads = [jax.random.normal(jax.random.key(i), (6, 10)) for i in range(3)]
  state, previous = tx.init(grads[0]), None
  for g in grads:
    out, state = tx.update(g, state)
    momentum = [np.asarray(state.trace)]
    got = refine.nesterov_input(momentum, previous, beta)
    np.testing.assert_allclose(got[0], np.asarray(out), rtol=1e-5, atol=1e-6)
    previous = momentum


def test_recorder_sees_root_newton_schulz_input():
  """With the gate and burst guard off, ROOT's Newton-Schulz input is
  ``G_t + beta M_t`` of the raw gradients: the recorded spectra are its spectra."""
  model = nnx.Linear(8, 12, use_bias=False, rngs=nnx.Rngs(0))
  tx = root_optax.root(1e-2, outlier_gate=math.inf, burst_factor=math.inf)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  recorder = refine.NewtonSchulzRecorder(every=2, early_steps=2, keep_steps=(2, 4))
  beta, momentum = refine.ROOT_BETA, np.zeros((8, 12))
  for step in range(1, 5):
    x = jax.random.normal(jax.random.key(step), (16, 8))
    grads = nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(model)
    g = np.asarray(grads.kernel[...], np.float64)
    momentum = beta * momentum + g
    optimizer.update(model, grads)
    recorder(step, optimizer)
    if step % 2 == 0:
      np.testing.assert_allclose(recorder.matrices[step][0], g + beta * momentum,
                                 rtol=1e-5, atol=1e-6)
  assert [len(recorder.spectra[s].spectra[(8, 12)]) for s in ("early", "all")] == [1, 2]
  np.testing.assert_allclose(recorder.spectra["all"].spectra[(8, 12)][1],
                             np.linalg.svd(recorder.matrices[4][0], compute_uv=False), rtol=1e-6)


def test_recording_leaves_training_unchanged():
  config = runtime.apply_quick(lm_refine.get_config())  # a copy of QUICK to change
  config.steps, config.eval_every = 6, 3
  run = config.runs[0]
  recorder = refine.NewtonSchulzRecorder(every=2, early_steps=4)
  plain = train.train_one(config, run, 0)
  recorded = train.train_one(config, run, 0, on_step=recorder)
  assert plain["history"] == recorded["history"]
  # 64x64: query, key, value, out; 64x256: fc, proj; recorded at steps 2, 4, 6.
  counts = {k: len(v) for k, v in recorder.spectra["all"].spectra.items()}
  assert counts == {(64, 64): 12, (64, 256): 6}


def test_refine_quick(run_quick, tmp_path):
  stdout, rows = run_quick(MODULE, [], tmp_path)
  assert [(r["run"], r["seed"]) for r in rows] == [(n, "0") for n in ["ROOT"] + VARIANTS]
  for r in rows:
    assert float(r["final_val"]) < math.log(256) - 1.0
  table = (tmp_path / "table.md").read_text()
  assert table in stdout
  assert all(f"| {name} | 1 |" in table for name in VARIANTS)
  muon = polynomials.steps_schedule(coefficients_lib.MUON_COEFFICIENTS, 5)
  for name in VARIANTS:
    path = tmp_path / f"coefficients_seed0_{refine._slug(name)}.json"  # pylint: disable=protected-access
    table = root_optax.load_coefficients(str(path))
    assert table.normalization == "frobenius"
    assert set(table.shapes) == {(64, 64), (64, 256)}
    for coeffs in table.shapes.values():
      assert coeffs.shape == (5, 3) and not np.allclose(coeffs, muon)
    assert json.loads(path.read_text())["source"].startswith("root_optax.calibrate")
  fits = _csv(tmp_path / "fits.csv")
  assert len(fits) == 2 * len(VARIANTS) and all(f["safe"] == "True" for f in fits)
  # Fitted on the whole run's inputs alone, the set is more precise on them than Muon's.
  polar = {(p["shape"], p["coefficients"]): float(p["exact_all"]) for p in _csv(tmp_path / "polar.csv")}
  for shape in ("64x64", "64x256"):
    assert polar[(shape, REAL_ONLY)] < polar[(shape, refine.MUON)]
  for name in ("early", "all"):
    assert root_optax.SpectrumRecorder.load(str(tmp_path / f"spectra_seed0_{name}.npz")).spectra


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))
