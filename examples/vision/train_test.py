"""Smoke test of the vision example: `--quick` on three runs."""


def test_train_vision_quick(run_quick, tmp_path):
  stdout, rows = run_quick(
      "examples.vision.main", ["--config.only", "Muon (optax),ROOT (default),ROOT paper p=0.9"],
      tmp_path)
  assert [r["run"] for r in rows] == ["Muon (optax)", "ROOT (default)", "ROOT paper p=0.9"]
  for r in rows:
    assert 10.0 < float(r["acc_mean"]) <= 100.0  # above chance (10 classes)
  assert "Δ acc vs Muon (optax)" in stdout and "(baseline)" in stdout
  assert "scored on test" in stdout
  assert (tmp_path / "vision.png").stat().st_size > 0
  assert (tmp_path / "table.md").read_text().count("\n") == 5  # header, rule, 3 runs
