"""Smoke test of the vision example: `--quick` on two runs."""


def test_train_vision_quick(run_quick, tmp_path):
  stdout, rows = run_quick("examples.vision.main", ["--config.only", "Muon (optax),ROOT p=0.9"],
                           tmp_path)
  assert [r["run"] for r in rows] == ["Muon (optax)", "ROOT p=0.9"]
  for r in rows:
    assert 10.0 < float(r["acc_mean"]) <= 100.0  # above chance (10 classes)
  assert "acc_mean" in stdout
  assert (tmp_path / "vision.png").stat().st_size > 0
