"""Tests for examples/common/runtime.py."""

from examples.common import runtime


def test_worker_tasks_group_a_runs_seeds():
  jobs = [(r, s) for r in range(3) for s in (0, 1, 2)]
  # Enough runs: one task per run (one compilation per run and worker).
  assert runtime.worker_tasks(jobs, 2) == [[(r, 0), (r, 1), (r, 2)] for r in range(3)]
  # One run, two workers: its seeds are split so that both work.
  assert runtime.worker_tasks(jobs[:3], 2) == [[(0, 0), (0, 1)], [(0, 2)]]
  assert sorted(j for t in runtime.worker_tasks(jobs, 8) for j in t) == jobs
