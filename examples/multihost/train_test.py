"""Tests of the multi-host example's pieces: checkpoint fit, data record, cost model.

The multi-process runs (launcher, faults, resume, restore into other meshes)
are `tests/test_multihost.py`.
"""

import jax
import numpy as np
import pytest

from configs.multihost import get_config
from examples.multihost import checkpoint
from examples.multihost import cost
from examples.multihost import train as mt


def test_tree_mismatches_lists_missing_extra_and_dtype():
  saved = {"w": np.zeros((2, 3), np.float32), "old": np.zeros(1, np.float32)}
  target = {"w": jax.ShapeDtypeStruct((2, 3), np.dtype("bfloat16")),
            "new": jax.ShapeDtypeStruct((1,), np.float32)}
  assert checkpoint.tree_mismatches(saved, target) == [
      "old: in the checkpoint only", "new: in the model only",
      "w: checkpoint (2, 3) float32, model (2, 3) bfloat16"]
  assert checkpoint.tree_mismatches(saved, saved) == []


def test_data_record_of_another_stream_is_refused():
  config = get_config()
  config.update(global_batch=64, seed=0)
  mt.check_data_record(config, {"step": 4, "global_batch": 64, "seed": 0})
  with pytest.raises(ValueError, match="global_batch=32"):
    mt.check_data_record(config, {"step": 4, "global_batch": 32, "seed": 0})


@pytest.mark.parametrize("line, groups", [
    ("replica_groups={{0,1},{2,3}}, use_global_device_ids=true", [[0, 1], [2, 3]]),
    ("replica_groups=[2,4]<=[4,2]T(1,0), dimensions={1}", [[0, 2, 4, 6], [1, 3, 5, 7]]),
    ("replica_groups=mesh['axis_0'=1,'axis_1'=2,'axis_2'=1,'axis_3'=4], "
     "device_ids=([4,2]T(1,0)) {'axis_1'}, use_global_device_ids=true",
     [[0, 1], [2, 3], [4, 5], [6, 7]]),
    ("replica_groups=mesh['axis_0'=4,'axis_1'=1,'axis_2'=2] {'axis_0'}, to_apply=%add",
     [[0, 2, 4, 6], [1, 3, 5, 7]]),
    ("source_target_pairs={{0,0},{2,1},{4,2}}, metadata={}", [[0, 0], [2, 1], [4, 2]]),
])
def test_cost_model_reads_every_spelling_of_device_groups(line, groups):
  assert cost.device_groups(line) == groups


def test_cost_model_counts_loop_trips_and_host_crossings():
  hlo = "\n".join([
      "%body.1 (p: s32[]) -> s32[] {",
      "  %all-reduce.1 = s32[1]{0} all-reduce(%x), replica_groups={{0,1},{2,3}}, to_apply=%a",
      "}",
      "ENTRY %main.2 (p: f32[16,32]) -> f32[16,32] {",
      '  %while.3 = (s32[]) while(%t), condition=%cond.1, body=%body.1, '
      'backend_config={"known_trip_count":{"n":"31"}}',
      "  %all-reduce.2 = f32[16,32]{1,0} all-reduce(%g), replica_groups={{0,2},{1,3}}, "
      "to_apply=%a",
      "}"])
  ops = cost.collectives(hlo)
  assert [op["per_step"] for op in ops] == [31, 1]
  assert cost.cost_table(ops, devices_per_process=2) == {
      ("all-reduce", False): [31, 31 * 4], ("all-reduce", True): [1, 16 * 32 * 4]}
