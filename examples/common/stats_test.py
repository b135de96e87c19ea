"""Tests for examples/common/stats.py: seeded statistics of the comparison tables."""

import math

import numpy as np

from examples.common import stats


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
