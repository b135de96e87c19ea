"""Tests for examples/common/data.py: the examples' datasets and batches."""

import numpy as np

from examples.common import data


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
