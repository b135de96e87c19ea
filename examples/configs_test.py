"""The configs (`configs/*.py`) that the examples load with ``--config``."""

import importlib
import inspect
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import root_optax

from examples._test_helpers import tiny_params
from examples._test_helpers import two_steps
from examples.common import noise as grad_noise
from examples.common import optimizers
from examples.common import runtime

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every config module (configs/*.py but the helpers).
CONFIGS = tuple(sorted(p.stem for p in (REPO / "configs").glob("*.py") if not p.stem.startswith("_")))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  if "runs" in config or "quick" in config:  # every comparison has a quick variant
    quick = runtime.apply_quick(config)  # the quick overrides name existing fields
    assert quick.to_dict().keys() == config.to_dict().keys()
  if "runs" not in config:  # configs/pjit.py, configs/multihost.py: one training run
    return
  assert runtime.selected_runs(config) == list(config.runs)
  params = tiny_params()
  for run in config.runs:
    state = optimizers.make_optimizer(run, config.optim, 10).init(params)
    assert jax.tree.leaves(state), run.name


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
  params = tiny_params()
  grads = jax.tree.map(lambda p: p + 100.0 * (jnp.arange(p.size).reshape(p.shape) % 50 == 0), params)
  base = ml_collections.ConfigDict(dict(warmup=1, weight_decay=0.1, b1=0.9, b2=0.95))
  hidden = {}
  for name, kwargs in (("default", {}), ("no_outliers", _runs.root_without_outlier_handling()),
                       ("adanewton", _runs.root_adanewton())):
    run = ml_collections.ConfigDict(dict(optimizer="root", lr=1e-2, root=kwargs))
    hidden[name] = two_steps(optimizers.make_optimizer(run, base, 10), params, grads)["block"]["kernel"]
  assert not np.allclose(hidden["default"], hidden["no_outliers"])
  assert not np.allclose(hidden["default"], hidden["adanewton"])
