"""Helpers shared by the configs: one run entry of ``config.runs``, ROOT variants."""

import inspect
import math

import ml_collections

import root_optax

# The keyword arguments `root_optax.root` accepts in this checkout. The ROOT
# variants below use the library's own switches once it has them, and an
# equivalent spelling with today's arguments until then.
_ROOT_ARGS = frozenset(inspect.signature(root_optax.root).parameters)


def run(name: str, optimizer: str, lr: float, **fields) -> ml_collections.ConfigDict:
  """A run: its display ``name``, ``optimizer`` ('adamw' | 'muon' | 'root'), peak ``lr``.

  Optional fields: ``root`` (keyword arguments of `root_optax.root`), ``noise``
  (a gradient-noise kind), ``family`` (groups runs in the robustness table).
  """
  return ml_collections.ConfigDict(dict(name=name, optimizer=optimizer, lr=lr, **fields))


def root_paper() -> dict:
  """`root()` keyword arguments of ROOT as published: ``variant="paper"``.

  Until `root()` accepts ``variant``, its equivalent: the quantile 0.90 clip and
  the paper's Table 1 coefficients (the library's default before ``variant``).
  """
  if "variant" in _ROOT_ARGS:
    return dict(variant="paper")
  return dict(quantile=0.90, ns_coeffs="paper")


def root_without_outlier_handling() -> dict:
  """`root()` keyword arguments of the "AdaNewton only" ablation: the defaults
  with every outlier stage off.

  ``outliers=False`` where `root()` has that switch; else, with the gradient
  gate and burst guard of ``variant="robust"``, both at ``math.inf`` (off) and
  the paper's momentum clip at ``quantile=1.0`` (off); before those,
  ``quantile=1.0`` alone (the threshold is the largest entry plus 1e-9, so
  nothing is clipped).
  """
  if "outliers" in _ROOT_ARGS:
    return dict(outliers=False)
  if "outlier_gate" in _ROOT_ARGS:
    return dict(outlier_gate=math.inf, burst_factor=math.inf, quantile=1.0)
  return dict(quantile=1.0)


def root_muon_coefficients() -> dict:
  """`root()` keyword arguments of the "outlier handling only" ablation:
  Muon's Newton-Schulz triple for every shape, ROOT's default outlier handling."""
  return dict(ns_coeffs="muon")
