"""Data for the examples: nothing is downloaded.

* Language modelling: the bytes of the Python standard library's own top-level
  ``*.py`` files (``sysconfig.get_paths()['stdlib']``), sorted by name. Every
  ``val_every``-th file (indices ``val_every - 1, 2 * val_every - 1, ...`` of the
  sorted list) is held out for validation, so the split is by file, fixed and
  reproducible for a given Python version. Files are joined with a NUL byte.
* Vision: scikit-learn's bundled ``digits`` (1797 8x8 images, 10 classes), split
  into train, validation and test by ``train_test_split(stratify=labels,
  random_state=0)`` (`digits_split`).
* Sharded training (pjit): token sequences of affine recurrences
  (`affine_sequences`).
* Multi-host training: a teacher-labelled Gaussian classification stream in
  which every example has its own seed (`teacher_rows`), so that a process can
  read any slice of any batch.
"""

from __future__ import annotations

import pathlib
import sysconfig
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

SEPARATOR = b"\x00"
VOCAB_SIZE = 256


def stdlib_files(root: str | None = None) -> list[pathlib.Path]:
  """The top-level ``*.py`` files of the standard library, sorted by name."""
  root = pathlib.Path(root or sysconfig.get_paths()["stdlib"])
  files = sorted(root.glob("*.py"), key=lambda p: p.name)
  if not files:
    raise FileNotFoundError(f"no *.py files in {root}")
  return files


def split_files(files: list[pathlib.Path], val_every: int) -> tuple[list, list]:
  """Holds out every ``val_every``-th file (1-based) for validation."""
  if val_every < 2:
    raise ValueError(f"val_every must be >= 2, got {val_every}")
  train = [f for i, f in enumerate(files) if (i + 1) % val_every]
  val = [f for i, f in enumerate(files) if not (i + 1) % val_every]
  return train, val


def _read_bytes(files: list[pathlib.Path], max_bytes: int) -> np.ndarray:
  data = SEPARATOR.join(f.read_bytes() for f in files)
  if max_bytes:
    data = data[:max_bytes]
  return np.frombuffer(data, dtype=np.uint8)


class ByteCorpus(NamedTuple):
  """Train and validation byte streams and where they came from."""
  train: np.ndarray
  val: np.ndarray
  train_files: list
  val_files: list


def stdlib_corpus(val_every: int = 10, max_train_bytes: int = 0,
                  max_val_bytes: int = 0, root: str | None = None) -> ByteCorpus:
  """Loads the byte-level standard-library corpus (see module docstring).

  Args:
    val_every: Every ``val_every``-th sorted file goes to validation.
    max_train_bytes: Truncate the training stream (0: keep all).
    max_val_bytes: Truncate the validation stream (0: keep all).
    root: Another directory of ``*.py`` files (default: the stdlib).

  Returns:
    A `ByteCorpus`.
  """
  train_files, val_files = split_files(stdlib_files(root), val_every)
  return ByteCorpus(_read_bytes(train_files, max_train_bytes),
                    _read_bytes(val_files, max_val_bytes),
                    [f.name for f in train_files], [f.name for f in val_files])


def lm_batches(stream: np.ndarray, batch_size: int, seq_len: int,
               seed: int) -> Iterator[np.ndarray]:
  """Endless random windows of ``seq_len + 1`` bytes, in a seeded order.

  The order depends only on ``seed`` and the stream, so every optimizer sees
  the same batches. Yields int32 arrays of shape ``(batch_size, seq_len + 1)``.
  """
  rng = np.random.default_rng(seed)
  offsets = np.arange(seq_len + 1)
  while True:
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    yield stream[starts[:, None] + offsets].astype(np.int32)


def lm_eval_batches(stream: np.ndarray, num_batches: int, batch_size: int,
                    seq_len: int, seed: int = 12345) -> np.ndarray:
  """A fixed evaluation set: ``(num_batches, batch_size, seq_len + 1)``."""
  it = lm_batches(stream, batch_size, seq_len, seed)
  return np.stack([next(it) for _ in range(num_batches)])


class DigitsSplit(NamedTuple):
  """scikit-learn's digits, split three ways: every array is NumPy."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def digits_split(test_size: float = 0.2, val_size: float = 0.2) -> DigitsSplit:
  """sklearn digits, split into train, validation and test.

  Images are ``(n, 8, 8, 1)`` float32 scaled to [0, 1]. ``test_size`` of the
  images are held out for the final test; ``val_size`` of the rest are held
  out for choosing learning rates. Both splits are stratified and fixed
  (``random_state=0``), so a rate chosen on validation never saw the test set.
  """
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  x_rest, x_te, y_rest, y_te = train_test_split(
      x, y, test_size=test_size, stratify=y, random_state=0)
  x_tr, x_val, y_tr, y_val = train_test_split(
      x_rest, y_rest, test_size=val_size, stratify=y_rest, random_state=0)
  return DigitsSplit(x_tr, y_tr, x_val, y_val, x_te, y_te)


def epoch_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
  """Index batches of one shuffled epoch (the last partial batch is dropped)."""
  perm = rng.permutation(n)
  for i in range(n // batch_size):
    yield perm[i * batch_size:(i + 1) * batch_size]


def affine_sequences(batch_size: int, seq_len: int, vocab: int,
                     rng: np.random.Generator) -> Iterator[np.ndarray]:
  """Sequences of an affine recurrence ``t -> (a t + b) mod vocab``, ``(a, b)`` per sequence.

  Yields int32 arrays of shape ``(batch_size, seq_len + 1)``.
  """
  while True:
    a = rng.integers(1, 4, size=(batch_size, 1))
    b = rng.integers(0, vocab, size=(batch_size, 1))
    start = rng.integers(0, vocab, size=(batch_size, 1))
    seq = [start]
    for _ in range(seq_len):
      seq.append((a * seq[-1] + b) % vocab)
    yield np.concatenate(seq, axis=1).astype(np.int32)


def _teacher(seed: int, features: int, classes: int) -> np.ndarray:
  return np.random.default_rng([seed, 0]).standard_normal((features, classes))


def teacher_rows(seed: int, features: int, classes: int, rows: range) -> dict:
  """The examples at global positions ``rows`` of an endless classification stream.

  Example ``i`` is ``x ~ N(0, I)`` drawn from its own seed ``[seed, 1, i]``,
  labelled ``argmax(x @ W)`` by a fixed random teacher ``W``. Any slice of any
  batch can be read without reading the others: a stand-in for a sharded
  dataset.

  Returns:
    ``{'x': float32 (len(rows), features), 'y': int32 (len(rows),)}``.
  """
  x = np.stack([np.random.default_rng([seed, 1, i]).standard_normal(features)
                for i in rows]).astype(np.float32)
  y = np.argmax(x @ _teacher(seed, features, classes), axis=-1).astype(np.int32)
  return {"x": x, "y": y}
