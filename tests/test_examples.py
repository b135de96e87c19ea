"""Examples: `--quick` smoke runs of both scripts, configs, data, gradient noise."""

import csv
import importlib
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from examples import common  # noqa: E402
from examples import data  # noqa: E402

CONFIGS = ("lm", "lm_sweep", "lm_quantile", "lm_outliers", "vision", "vision_sweep")


def _run_script(args, workdir, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, *args, "--quick", "--workdir", str(workdir)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "summary.csv") as f:
    return proc.stdout, list(csv.DictReader(f))


def test_train_lm_quick(tmp_path):
  stdout, rows = _run_script(
      ["examples/train_lm.py", "--config.only", "ROOT,SoftThresh only"], tmp_path)
  assert [r["run"] for r in rows] == ["ROOT", "SoftThresh only"]
  for r in rows:
    # Learned something: below the uniform byte loss ln(256) = 5.545 nats.
    assert float(r["final_val"]) < math.log(256) - 1.0
    assert float(r["final_train"]) < math.log(256) - 1.0
  # The 'paper' table has no entry for the small shapes, so both runs use Muon's
  # triple and must coincide exactly; a second run that was warm-started by the
  # first (shared model state) would not.
  assert rows[0]["final_val"] == rows[1]["final_val"]
  assert rows[0]["final_train"] == rows[1]["final_train"]
  assert "| ROOT |" in stdout and "final_val" in stdout
  assert (tmp_path / "curves.png").stat().st_size > 0
  with open(tmp_path / "curves.csv") as f:
    curves = list(csv.DictReader(f))
  assert len(curves) == 2 * 20  # quick mode: 20 steps per run


def test_train_vision_quick_as_module(tmp_path):
  stdout, rows = _run_script(
      ["-m", "examples.train_vision", "--config.only", "Muon (optax),ROOT p=0.9"], tmp_path)
  assert [r["run"] for r in rows] == ["Muon (optax)", "ROOT p=0.9"]
  for r in rows:
    assert 10.0 < float(r["acc_mean"]) <= 100.0  # above chance (10 classes)
  assert "acc_mean" in stdout
  assert (tmp_path / "vision.png").stat().st_size > 0


def _tiny_params():
  key = jax.random.split(jax.random.key(0), 4)
  return {
      "embed": {"embedding": jax.random.normal(key[0], (8, 4))},
      "block": {"kernel": jax.random.normal(key[1], (4, 6)), "scale": jnp.ones(4)},
      "lm_head": {"kernel": jax.random.normal(key[2], (4, 8))},
  }


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  quick = common.apply_quick(config)  # the quick overrides name existing fields
  assert quick.to_dict().keys() == config.to_dict().keys()
  assert common.selected_runs(config) == list(config.runs)
  params = _tiny_params()
  for run in config.runs:
    state = common.make_optimizer(run, config.optim, 10).init(params)
    assert jax.tree.leaves(state), run.name


def _two_steps(tx, params, grads):
  state = tx.init(params)
  _, state = tx.update(grads, state, params)  # step 0: warmup lr is 0
  return tx.update(grads, state, params)[0]


def test_muon_and_root_route_embeddings_and_heads_to_adamw():
  params = _tiny_params()
  dims = common.muon_dimension_numbers(params)
  assert dims["embed"]["embedding"] is None and dims["lm_head"]["kernel"] is None
  assert dims["block"]["kernel"] is not None and dims["block"]["scale"] is None
  # On the embedding, Muon's and ROOT's updates equal AdamW's (same betas, lr, wd).
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  second = {
      opt: _two_steps(common.make_optimizer(
          ml_collections.ConfigDict(dict(optimizer=opt, lr=1e-2, root=dict(coefficients="muon"))),
          base, 10), params, grads)
      for opt in common.OPTIMIZERS}
  # optax's muon runs its Adam branch with its own `nesterov` flag (NAdamW).
  second["nadamw"] = _two_steps(optax.adamw(
      common.schedule(1e-2, 1, 10), b1=0.9, b2=0.95, weight_decay=0.1, nesterov=True),
      params, grads)
  assert np.abs(second[common.ADAMW]["embed"]["embedding"]).max() > 1e-3
  for opt, ref in ((common.MUON, "nadamw"), (common.ROOT, common.ADAMW)):
    adam = second[ref]
    for path in (("embed", "embedding"), ("lm_head", "kernel"), ("block", "scale")):
      np.testing.assert_allclose(second[opt][path[0]][path[1]], adam[path[0]][path[1]],
                                 rtol=1e-5, atol=1e-8, err_msg=f"{opt} {path}")
    # ... and differs from it on the hidden matrix (orthogonalised, RMS 0.2 * lr).
    hidden = second[opt]["block"]["kernel"]
    assert not np.allclose(hidden, adam["block"]["kernel"], rtol=0.1)
    decay = 0.1 * 1e-2 * params["block"]["kernel"]  # decoupled weight decay x lr
    rms = float(jnp.sqrt(jnp.mean(jnp.square(hidden + decay))))
    np.testing.assert_allclose(rms, 0.2 * 1e-2, rtol=0.3)  # Moonlight RMS matching


def test_unknown_optimizer_and_run_names_raise():
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  with pytest.raises(ValueError, match="optimizer must be one of"):
    common.make_optimizer(ml_collections.ConfigDict(dict(optimizer="sgd", lr=1.0)), base, 10)
  config = importlib.import_module("configs.lm").get_config()
  config.only = "AdamW,nope"
  with pytest.raises(ValueError, match="nope"):
    common.selected_runs(config)


def _noise(kind, **kw):
  return ml_collections.ConfigDict(dict(kind=kind, fraction=0.1, spike_scale=100.0,
                                        t_scale=0.5, df=1.5, **kw))


def test_spike_noise_scales_a_fraction_of_entries():
  g = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(200, 100)), jnp.float32)}
  out = common.inject_noise(g, jax.random.key(1), _noise("spikes"))
  ratio = np.asarray(out["w"] / g["w"])
  assert set(np.unique(np.round(ratio, 4))) <= {1.0, 100.0}
  hit = np.mean(ratio > 1.5)  # Binomial(20000, 0.1): std 0.0021
  assert abs(hit - 0.1) < 0.01
  same = common.inject_noise(g, jax.random.key(1), _noise("spikes"))
  np.testing.assert_array_equal(out["w"], same["w"])  # same key, same corruption


def test_student_t_noise_matches_numpy_quantiles():
  g = jnp.full((400, 250), 2.0, jnp.float32)  # rms 2
  out = common.inject_noise({"w": g}, jax.random.key(0), _noise("student_t"))["w"]
  z = np.abs(np.asarray(out - g)) / (0.5 * 2.0)
  ref = np.abs(np.random.default_rng(0).standard_t(1.5, size=400 * 250))
  for q in (0.5, 0.9, 0.99):
    assert abs(np.quantile(z, q) / np.quantile(ref, q) - 1) < 0.1, q
  none = common.inject_noise({"w": g}, jax.random.key(0), _noise("none"))["w"]
  assert none is g


def test_robustness_rows_pivot():
  summaries = [
      {"family": "A", "noise": "none", "final_val": 2.0},
      {"family": "A", "noise": "spikes", "final_val": 2.5},
      {"family": "B", "noise": "none", "final_val": 1.0},
      {"family": "B", "noise": "student_t", "final_val": 0.75},
  ]
  rows = common.robustness_rows(summaries)
  assert rows[0] == {"optimizer": "A", "none": 2.0, "spikes": 2.5, "delta_spikes": 0.5}
  assert rows[1] == {"optimizer": "B", "none": 1.0, "student_t": 0.75, "delta_student_t": -0.25}


def test_stdlib_split_is_by_file_and_fixed(tmp_path):
  for i in range(25):
    (tmp_path / f"m{i:02d}.py").write_bytes(bytes([65 + i]) * (i + 1))
  (tmp_path / "notes.txt").write_text("ignored")
  corpus = data.stdlib_corpus(val_every=10, root=str(tmp_path))
  assert corpus.val_files == ["m09.py", "m19.py"]
  assert len(corpus.train_files) == 23 and not set(corpus.train_files) & set(corpus.val_files)
  assert bytes(corpus.val) == b"J" * 10 + data.SEPARATOR + b"T" * 20
  assert len(corpus.train) == sum(i + 1 for i in range(25) if i not in (9, 19)) + 22


def test_lm_batches_are_windows_in_a_seeded_order():
  stream = np.arange(1000, dtype=np.uint8)
  a = next(data.lm_batches(stream, 4, 16, seed=3))
  b = next(data.lm_batches(stream, 4, 16, seed=3))
  np.testing.assert_array_equal(a, b)
  assert a.shape == (4, 17) and a.dtype == np.int32
  np.testing.assert_array_equal(np.diff(a, axis=1) % 256, 1)  # contiguous windows


def test_digits_split_is_stratified_and_scaled():
  x_tr, y_tr, x_te, y_te = data.digits_split()
  assert x_tr.shape[1:] == (8, 8, 1) and len(x_tr) + len(x_te) == 1797
  assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
  np.testing.assert_allclose(np.bincount(y_te) / len(y_te), np.bincount(y_tr) / len(y_tr), atol=0.01)


def test_schedule_warms_up_and_decays():
  sched = common.schedule(1.0, 10, 100)
  assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
  assert abs(float(sched(100)) - 0.1) < 1e-6
  assert isinstance(optax.adamw(sched), optax.GradientTransformation)


def test_student_t_noise_has_the_t2_distribution():
  """The df = 2 inverse-CDF sampler against the t(2) CDF 1/2 + t / (2 sqrt(2 + t^2))."""
  samples = np.asarray(common._student_t(jax.random.key(0), 2.0, (100_000,), jnp.float32))
  for t in (-10.0, -2.0, -0.5, 0.0, 0.7, 3.0, 30.0):
    expected = 0.5 + t / (2 * math.sqrt(2 + t * t))
    assert abs(np.mean(samples <= t) - expected) < 0.005, t
  assert np.all(np.isfinite(samples))
