"""Helpers shared by the configs: one run entry of ``config.runs``, ROOT variants."""

import math

import ml_collections


def run(name: str, optimizer: str, lr: float, **fields) -> ml_collections.ConfigDict:
  """A run: its display ``name``, ``optimizer`` ('adamw' | 'muon' | 'root'), peak ``lr``.

  Optional fields: ``root`` (keyword arguments of `root_optax.root`), ``noise``
  (a gradient-noise kind), ``family`` (groups runs in the robustness table).
  """
  return ml_collections.ConfigDict(dict(name=name, optimizer=optimizer, lr=lr, **fields))


def root_paper() -> dict:
  """`root()` keyword arguments of ROOT as published, on the LM example's shapes.

  The paper's Table 1 has no entry for 128x128 or 128x512, for which
  ``variant="paper"`` falls back to Muon's triple: named here, so that tables
  say so and `root()` has nothing to warn about.
  """
  return dict(variant="paper", ns_coeffs="muon")


def root_without_outlier_handling() -> dict:
  """The defaults with every outlier stage off: no gate, no burst guard, no momentum clip."""
  return dict(outlier_gate=math.inf, burst_factor=math.inf, quantile=1.0)


def root_adanewton() -> dict:
  """The defaults with AdaNewton's per-shape, per-iteration coefficients."""
  return dict(ns_coeffs="auto")


def robustness_config(base: ml_collections.ConfigDict, name: str, title: str,
                      families, noise_kinds, *, rates) -> ml_collections.ConfigDict:
  """``base`` with one run per ``(family, noise kind)`` and the robustness report.

  ``families``: ``(name, optimizer, extra fields)`` triples; each run trains at
  its optimizer's rate in ``rates`` (optimizer -> peak learning rate, e.g.
  ``configs/lm.py``'s ``LR``).
  """
  base.name, base.title, base.report = name, title, "robustness"
  base.runs = tuple(
      run(f"{family} [{noise}]", optimizer, rates[optimizer], family=family, noise=noise, **extra)
      for family, optimizer, extra in families for noise in noise_kinds)
  return base
