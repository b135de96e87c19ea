"""The examples' shared code: configs, optimizers, data, gradient noise, seeded statistics.

The examples' own smoke runs are `examples/*/train_test.py`.
"""

import importlib
import inspect
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import root_optax

from examples.common import data
from examples.common import noise as grad_noise
from examples.common import optimizers
from examples.common import runtime
from examples.common import stats

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every config module (configs/*.py but the helpers).
CONFIGS = tuple(sorted(p.stem for p in (REPO / "configs").glob("*.py") if not p.stem.startswith("_")))


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
  if "runs" in config or "quick" in config:  # every comparison has a quick variant
    quick = runtime.apply_quick(config)  # the quick overrides name existing fields
    assert quick.to_dict().keys() == config.to_dict().keys()
  if "runs" not in config:  # configs/pjit.py, configs/multihost.py: one training run
    return
  assert runtime.selected_runs(config) == list(config.runs)
  params = _tiny_params()
  for run in config.runs:
    state = optimizers.make_optimizer(run, config.optim, 10).init(params)
    assert jax.tree.leaves(state), run.name


def _two_steps(tx, params, grads):
  state = tx.init(params)
  _, state = tx.update(grads, state, params)  # step 0: warmup lr is 0
  return tx.update(grads, state, params)[0]


def test_muon_and_root_route_embeddings_and_heads_to_adamw():
  params = _tiny_params()
  dims = optimizers.muon_dimension_numbers(params)
  assert dims["embed"]["embedding"] is None and dims["lm_head"]["kernel"] is None
  assert dims["block"]["kernel"] is not None and dims["block"]["scale"] is None
  # On the embedding, Muon's and ROOT's updates equal AdamW's (same betas, lr, wd).
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  second = {
      opt: _two_steps(optimizers.make_optimizer(
          ml_collections.ConfigDict(dict(optimizer=opt, lr=1e-2, root=dict(ns_coeffs="muon"))),
          base, 10), params, grads)
      for opt in optimizers.OPTIMIZERS}
  # optax's muon runs its Adam branch with its own `nesterov` flag (NAdamW).
  second["nadamw"] = _two_steps(optax.adamw(
      optimizers.schedule(1e-2, 1, 10), b1=0.9, b2=0.95, weight_decay=0.1, nesterov=True),
      params, grads)
  assert np.abs(second[optimizers.ADAMW]["embed"]["embedding"]).max() > 1e-3
  for opt, ref in ((optimizers.MUON, "nadamw"), (optimizers.ROOT, optimizers.ADAMW)):
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
    optimizers.make_optimizer(ml_collections.ConfigDict(dict(optimizer="sgd", lr=1.0)), base, 10)
  config = importlib.import_module("configs.lm").get_config()
  config.only = "AdamW,nope"
  with pytest.raises(ValueError, match="nope"):
    runtime.selected_runs(config)


def _noise(kind, **kw):
  fields = dict(kind=kind, fraction=1e-3, spike_scale=100.0, t_scale=0.5, df=1.5,
                burst_prob=0.01, burst_scale=30.0)
  return ml_collections.ConfigDict({**fields, **kw})


def test_spike_noise_adds_100_rms_to_a_tenth_of_a_percent_of_entries():
  rng = np.random.default_rng(0)
  g = {"w": jnp.asarray(rng.normal(size=(1000, 1000)), jnp.float32),
       "b": jnp.asarray(rng.normal(size=(200_000,)) * 3.0, jnp.float32)}
  out = grad_noise.inject_noise(g, jax.random.key(1), _noise("spikes"))
  for name, leaf in g.items():
    added = np.asarray(out[name], np.float64) - np.asarray(leaf, np.float64)
    hit = added != 0
    expected = 1e-3 * leaf.size  # Binomial(n, 1e-3): std ~ sqrt(expected)
    assert abs(hit.sum() - expected) < 5 * math.sqrt(expected), name
    rms = float(np.sqrt(np.mean(np.square(np.asarray(leaf, np.float64)))))
    np.testing.assert_allclose(np.abs(added[hit]), 100 * rms, rtol=1e-4, err_msg=name)
    assert 0.4 < np.mean(added[hit] > 0) < 0.6, name  # random sign, additive
  same = grad_noise.inject_noise(g, jax.random.key(1), _noise("spikes"))
  np.testing.assert_array_equal(out["w"], same["w"])  # same key, same corruption
  other = grad_noise.inject_noise(g, jax.random.key(2), _noise("spikes"))
  assert not np.array_equal(np.asarray(other["w"]) != np.asarray(g["w"]),
                            np.asarray(out["w"]) != np.asarray(g["w"]))


def _lm_like_grads():
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  return {"embed": {"embedding": normal(256, 16)},
          "blocks": {"0": {"fc": {"kernel": normal(16, 64)}, "norm1": {"scale": normal(16)},
                           "attn": {"query": {"kernel": normal(16, 16)}}}},
          "lm_head": {"kernel": normal(16, 256)}}


def test_bursts_add_30x_norm_directions_to_hidden_matrices_on_burst_steps():
  grads = _lm_like_grads()
  hidden = optimizers.is_hidden(grads)
  # Leaves in key order: blocks.0.attn.query, blocks.0.fc, blocks.0.norm1.scale, embed, lm_head.
  assert jax.tree.leaves(hidden) == [True, True, False, False, False]
  key = jax.random.key(3)
  steps = grad_noise.burst_steps(key, 2000, 0.01)
  assert 5 < len(steps) < 40  # Bernoulli(0.01): 20 expected
  burst_key = grad_noise.step_noise_key(key, steps[0])
  calm_key = grad_noise.step_noise_key(key, next(t for t in range(1, 2000) if t not in steps))
  noise = _noise("bursts")
  calm = grad_noise.inject_noise(grads, calm_key, noise)
  for a, b in zip(jax.tree.leaves(calm), jax.tree.leaves(grads)):
    np.testing.assert_array_equal(a, b)
  out = grad_noise.inject_noise(grads, burst_key, noise)
  for o, g, h in zip(jax.tree.leaves(out), jax.tree.leaves(grads), jax.tree.leaves(hidden)):
    if not h:
      np.testing.assert_array_equal(o, g)  # embeddings, heads, norms: untouched
      continue
    added = np.asarray(o, np.float64) - np.asarray(g, np.float64)
    ratio = np.linalg.norm(added) / np.linalg.norm(np.asarray(g, np.float64))
    np.testing.assert_allclose(ratio, 30.0, rtol=1e-3)
    # A random direction: spread over the matrix, not aligned with the gradient.
    cos = np.sum(added * np.asarray(g)) / (np.linalg.norm(added) * np.linalg.norm(g))
    assert abs(cos) < 0.2 and np.mean(added != 0) > 0.99


def test_default_seeds_have_bursts_in_a_300_step_run():
  counts = [len(grad_noise.burst_steps(grad_noise.noise_key(s), 300, 0.01)) for s in (0, 1, 2)]
  assert counts == [5, 4, 2]  # documented in configs/lm_outliers.py and examples/common/noise.py


def test_student_t_noise_matches_numpy_quantiles():
  g = jnp.full((400, 250), 2.0, jnp.float32)  # rms 2
  out = grad_noise.inject_noise({"w": g}, jax.random.key(0), _noise("student_t"))["w"]
  z = np.abs(np.asarray(out - g)) / (0.5 * 2.0)
  ref = np.abs(np.random.default_rng(0).standard_t(1.5, size=400 * 250))
  for q in (0.5, 0.9, 0.99):
    assert abs(np.quantile(z, q) / np.quantile(ref, q) - 1) < 0.1, q
  none = grad_noise.inject_noise({"w": g}, jax.random.key(0), _noise("none"))["w"]
  assert none is g
  with pytest.raises(ValueError, match="noise kind"):
    grad_noise.inject_noise({"w": g}, jax.random.key(0), _noise("gaussian"))


def _summaries(values: dict, noise="none", family=None):
  return [{"run": run if noise == "none" else f"{run} [{noise}]", "family": family or run,
           "seed": seed, "noise": noise, "final_val": v, "final_train": v + 0.5,
           "ms_per_step": 10.0 + seed}
          for run, per_seed in values.items() for seed, v in per_seed.items()]


def test_aggregate_runs_matches_a_hand_computation():
  summaries = _summaries({
      "Base": {0: 2.0, 1: 2.2, 2: 2.1},
      "A": {0: 1.9, 1: 2.0, 2: 2.05},   # diffs -0.1, -0.2, -0.05
      "B": {0: 2.3, 1: 2.1, 2: 2.1},    # diffs +0.3, -0.1, 0.0
  })
  rows = {r["run"]: r for r in stats.aggregate_runs(summaries, "Base")}
  assert rows["A"]["seeds"] == [0, 1, 2] and rows["A"]["n"] == 3
  np.testing.assert_allclose(rows["A"]["final_val_mean"], (1.9 + 2.0 + 2.05) / 3)
  mean = (1.9 + 2.0 + 2.05) / 3
  std = math.sqrt(sum((v - mean) ** 2 for v in (1.9, 2.0, 2.05)) / 2)  # sample std
  np.testing.assert_allclose(rows["A"]["final_val_std"], std)
  np.testing.assert_allclose(rows["A"]["ms_per_step_mean"], 11.0)
  # A - Base per seed: -0.1, -0.2, -0.05 -> mean -0.11667, std 0.07638, SE 0.04410.
  np.testing.assert_allclose(rows["A"]["d_final_val_mean"], -0.35 / 3)
  d = np.array([-0.1, -0.2, -0.05])
  np.testing.assert_allclose(rows["A"]["d_final_val_se"], d.std(ddof=1) / math.sqrt(3))
  assert rows["A"]["d_final_val_sig"]  # |-0.1167| > 2 x 0.0441
  # B - Base: +0.3, -0.1, 0.0 -> mean 0.0667, SE 0.1202: not significant.
  np.testing.assert_allclose(rows["B"]["d_final_val_mean"], 0.2 / 3)
  np.testing.assert_allclose(rows["B"]["d_final_val_se"],
                             np.std([0.3, -0.1, 0.0], ddof=1) / math.sqrt(3))
  assert not rows["B"]["d_final_val_sig"]
  np.testing.assert_allclose(rows["B"]["d_final_train_mean"], 0.2 / 3)  # train = val + 0.5
  assert "d_final_val_mean" not in rows["Base"]
  table = stats.format_aggregate(list(rows.values()), "Base")
  assert "| A | 3 | 2.4833 ± 0.0764 | 1.9833 ± 0.0764 | 11.0 ± 1.0 | -0.1167 ± 0.0441 * |" in table
  assert "| B | 3 |" in table and "+0.0667 ± 0.1202 |" in table
  assert "(baseline)" in table
  # Pairs by seed, not by position; one seed: no std, no SE, never significant.
  shuffled = list(reversed(summaries))
  again = {r["run"]: r for r in stats.aggregate_runs(shuffled, "Base")}
  np.testing.assert_allclose(again["A"]["d_final_val_mean"], -0.35 / 3)
  single = stats.aggregate_runs(_summaries({"Base": {0: 1.0}, "A": {0: 2.0}}), "Base")
  assert math.isnan(single[1]["d_final_val_se"]) and not single[1]["d_final_val_sig"]
  assert stats.fmt_mean_std(1.0, math.nan) == "1.0000"


def test_robustness_rows_match_a_hand_computation():
  summaries = []
  clean = {"Muon": {0: 1.5, 1: 1.6}, "ROOT": {0: 1.55, 1: 1.6}}
  spiky = {"Muon": {0: 1.9, 1: 1.8}, "ROOT": {0: 1.65, 1: 1.75}}
  for fam in clean:
    summaries += _summaries({fam: clean[fam]}, "none", fam)
    summaries += _summaries({fam: spiky[fam]}, "spikes", fam)
  rows = {(r["family"], r["noise"]): r for r in stats.robustness_rows(summaries, "Muon")}
  muon, root = rows[("Muon", "spikes")], rows[("ROOT", "spikes")]
  np.testing.assert_allclose(rows[("ROOT", "none")]["val_mean"], 1.575)
  np.testing.assert_allclose(root["val_std"], np.std([1.65, 1.75], ddof=1))
  # Damage per seed: Muon 0.4, 0.2 -> mean 0.3, SE std([0.4, 0.2]) / sqrt(2) = 0.1 (3 SE).
  np.testing.assert_allclose([muon["damage_mean"], muon["damage_se"]], [0.3, 0.1])
  assert muon["damage_sig"]
  # ROOT 0.1, 0.15 -> mean 0.125, SE 0.025; ratio to Muon's mean damage 0.125 / 0.3.
  np.testing.assert_allclose([root["damage_mean"], root["damage_se"]], [0.125, 0.025])
  assert root["damage_sig"]
  np.testing.assert_allclose(root["ratio"], 0.125 / 0.3)
  # Its SE, delta method on the paired damages: var(x) 0.00125, var(y) 0.02, cov -0.005,
  # r = 5/12: (0.00125 + r^2 0.02 - 2 r (-0.005)) / 2 / 0.3^2 = 0.0493827 -> SE 0.2222.
  np.testing.assert_allclose(root["ratio_se"], np.sqrt(0.0088889 / 0.18), rtol=1e-4)
  # ROOT damage - Muon damage per seed: -0.3, -0.05 -> mean -0.175, SE 0.125 (1.4 SE).
  np.testing.assert_allclose([root["vs_base_mean"], root["vs_base_se"]], [-0.175, 0.125])
  assert not root["vs_base_sig"]
  assert "ratio" not in muon and "damage_mean" not in rows[("Muon", "none")]
  table = stats.format_robustness(list(rows.values()), "Muon")
  assert ("| ROOT | spikes | 2 | 1.7000 ± 0.0707 | +0.1250 ± 0.0250 * | 0.417 ± 0.222 | -0.1750 ± 0.1250 |"
          in table)


def test_worker_tasks_group_a_runs_seeds():
  jobs = [(r, s) for r in range(3) for s in (0, 1, 2)]
  # Enough runs: one task per run (one compilation per run and worker).
  assert runtime.worker_tasks(jobs, 2) == [[(r, 0), (r, 1), (r, 2)] for r in range(3)]
  # One run, two workers: its seeds are split so that both work.
  assert runtime.worker_tasks(jobs[:3], 2) == [[(0, 0), (0, 1)], [(0, 2)]]
  assert sorted(j for t in runtime.worker_tasks(jobs, 8) for j in t) == jobs


def test_lm_configs_are_seeded_and_paired():
  for name in ("lm", "lm_ablations", "lm_outliers", "lm_quantile"):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert len(config.seeds) >= 3 and len(set(config.seeds)) == len(config.seeds), name
    names = {r.name for r in config.runs} | {r.get("family", r.name) for r in config.runs}
    assert config.baseline in names, name
  outliers = importlib.import_module("configs.lm_outliers").get_config()
  assert {r.noise for r in outliers.runs} == set(grad_noise.NOISE_KINDS)
  assert {r.family for r in outliers.runs} == {"AdamW", "Muon (optax)", "ROOT", "ROOT paper"}


def test_root_variant_helpers_build_the_intended_optimizers():
  from configs import _runs  # noqa: PLC0415
  accepted = set(inspect.signature(root_optax.root).parameters)
  for kwargs in (_runs.root_paper(), _runs.root_without_outlier_handling(), _runs.root_adanewton()):
    assert set(kwargs) <= accepted, kwargs
  # The ablations differ from each other and from the default ROOT.
  params = _tiny_params()
  grads = jax.tree.map(lambda p: p + 100.0 * (jnp.arange(p.size).reshape(p.shape) % 50 == 0), params)
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  hidden = {}
  for name, kwargs in (("default", {}), ("no_outliers", _runs.root_without_outlier_handling()),
                       ("adanewton", _runs.root_adanewton())):
    run = ml_collections.ConfigDict(dict(optimizer="root", lr=1e-2, root=kwargs))
    hidden[name] = _two_steps(optimizers.make_optimizer(run, base, 10), params, grads)["block"]["kernel"]
  assert not np.allclose(hidden["default"], hidden["no_outliers"])
  assert not np.allclose(hidden["default"], hidden["adanewton"])


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


def test_digits_split_is_stratified_scaled_and_disjoint():
  split = data.digits_split()
  assert split.x_train.shape[1:] == (8, 8, 1)
  assert len(split.x_train) + len(split.x_val) + len(split.x_test) == 1797
  assert (len(split.x_test), len(split.x_val)) == (360, 288)
  assert 0.0 <= split.x_train.min() and split.x_train.max() <= 1.0
  for labels in (split.y_val, split.y_test):
    np.testing.assert_allclose(np.bincount(labels) / len(labels),
                               np.bincount(split.y_train) / len(split.y_train), atol=0.015)
  rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}
  assert not rows(split.x_test) & (rows(split.x_val) | rows(split.x_train))  # no image shared
  assert not rows(split.x_val) & rows(split.x_train)
  np.testing.assert_array_equal(data.digits_split().y_test, split.y_test)  # fixed


def test_schedule_warms_up_and_decays():
  sched = optimizers.schedule(1.0, 10, 100)
  assert float(sched(0)) == 0.0 and abs(float(sched(10)) - 1.0) < 1e-6
  assert abs(float(sched(100)) - 0.1) < 1e-6
  assert isinstance(optax.adamw(sched), optax.GradientTransformation)


def test_student_t_noise_has_the_t2_distribution():
  """The df = 2 inverse-CDF sampler against the t(2) CDF 1/2 + t / (2 sqrt(2 + t^2))."""
  samples = np.asarray(grad_noise._student_t(jax.random.key(0), 2.0, (100_000,), jnp.float32))
  for t in (-10.0, -2.0, -0.5, 0.0, 0.7, 3.0, 30.0):
    expected = 0.5 + t / (2 * math.sqrt(2 + t * t))
    assert abs(np.mean(samples <= t) - expected) < 0.005, t
  assert np.all(np.isfinite(samples))
