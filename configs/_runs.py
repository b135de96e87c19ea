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
  """`root()` keyword arguments of ROOT as published."""
  return dict(variant="paper")


def root_without_outlier_handling() -> dict:
  """The defaults with every outlier stage off: no gate, no burst guard, no momentum clip."""
  return dict(outlier_gate=math.inf, burst_factor=math.inf, quantile=1.0)


def root_adanewton() -> dict:
  """The defaults with AdaNewton's per-shape, per-iteration coefficients."""
  return dict(ns_coeffs="auto")
