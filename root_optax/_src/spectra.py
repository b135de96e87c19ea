"""Singular-value spectra as Newton-Schulz sees them, for calibration.

Newton-Schulz acts on each singular value of its input separately, after the
input is normalised (paper Eq. 3), so fitting coefficients needs only the
normalised singular values of the matrices of a shape: of Gaussian matrices
(`gaussian_spectra`), of recorded momenta (`SpectrumRecorder`), or a mix
(`weighted_values`, paper Sec. 4.5).
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional

import jax
import numpy as np

from root_optax._src import coefficients
from root_optax._src import dimensions
from root_optax._src import normalization as normalization_lib
from root_optax._src import polynomials


def normalized_spectrum(singular_values: np.ndarray, normalization: str = "frobenius") -> np.ndarray:
  """Singular values as Newton-Schulz sees them after normalisation.

  ``s / ||s||_p`` with `normalization.schatten_p`'s p: ``'frobenius'``:
  ``s / ||s||_2`` (``X / ||X||_F``); ``'schatten4'``: ``s / ||s||_4``
  (``X / ||X||_{S4}``). Both lie in [0, 1]; zero stays zero.
  """
  p = normalization_lib.schatten_p(normalization)
  s = np.abs(np.asarray(singular_values, np.float64).ravel())
  top = s.max(initial=0.0)
  if top == 0.0:
    return s
  r = s / top  # no overflow for huge singular values
  return r / np.sum(r**p) ** (1.0 / p)


def matrix_singular_values(x: np.ndarray) -> np.ndarray:
  """Singular values of ``(..., m, n)`` matrices via ``eigvalsh`` of the smaller Gram.

  In float64 this is several times faster than an SVD for wide matrices and
  accurate to ~1e-8 of the top singular value, which is all the objective needs.
  """
  x = np.asarray(x, np.float64)
  if x.shape[-2] > x.shape[-1]:
    x = np.swapaxes(x, -1, -2)
  gram = x @ np.swapaxes(x, -1, -2)
  return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))[..., ::-1]


def orthogonalization_error(coeffs, singular_values: np.ndarray, ns_steps: int = 5,
                            normalization: str = "frobenius") -> float:
  """The paper's Table 1 metric for one matrix: mean over s of ``(g^(T)(s_hat) - 1)^2``.

  ``s_hat`` is ``s`` normalised as the kernel does (`normalized_spectrum`);
  equal to ``||NS(G) - U V^T||_F^2 / min(m, n)`` in exact arithmetic.

  References:
    He et al., 2025, Table 1 and Eq. 4.
  """
  x = normalized_spectrum(singular_values, normalization)
  return float(np.mean((polynomials.composed_polynomial(coeffs, x, ns_steps) - 1.0) ** 2))


def gaussian_spectra(shape: Sequence[int], *, num_values: int = 4096, seed: int = 0,
                     normalization: str = "frobenius", max_sample_dim: int = 512) -> np.ndarray:
  """Normalised singular values of i.i.d. standard normal matrices of ``shape``.

  Enough matrices are drawn to give at least ``num_values`` values, of which
  exactly ``num_values`` are kept (uniformly at random). Shapes
  whose smaller side exceeds ``max_sample_dim`` are sampled at the same aspect
  ratio with smaller side ``max_sample_dim`` and rescaled: a Gaussian spectrum
  divided by its p-norm (`normalization.schatten_p`) scales as ``min^(-1/p)``
  at a fixed aspect ratio (Marchenko-Pastur): ``min^(-1/2)`` (Frobenius),
  ``min^(-1/4)`` (Schatten-4). This keeps calibrating 8192x8192 as cheap as
  1024x1024.
  """
  m, n = coefficients.shape_key(shape)
  small = min(m, max_sample_dim)
  large = max(small, round(n * small / m))
  power = 1.0 / normalization_lib.schatten_p(normalization)
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(max(1, -(-num_values // small))):
    s = matrix_singular_values(rng.standard_normal((small, large)))
    out.append(normalized_spectrum(s, normalization) * (small / m) ** power)
  return _resample(np.concatenate(out), num_values, rng)


def _resample(values: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Exactly ``size`` of ``values``, sorted (a fixed size compiles once)."""
  if values.size == size:
    return np.sort(values)
  return np.sort(rng.choice(values, size, replace=values.size < size))


@dataclasses.dataclass
class SpectrumRecorder:
  """Collects singular values of the matrices of a pytree, keyed ``(min, max)``.

  Call `record` on what Newton-Schulz will see (the momentum, or the clipped
  momentum with ROOT) every few training steps, then pass the recorder (or its
  ``spectra``) to `root_optax.calibrate` as real spectra. Nothing is recorded inside
  ``jit``: `record` pulls the arrays to the host.

  Attributes:
    max_per_shape: Keep at most this many matrices per shape (the latest).
    weight_dimension_numbers: Which leaves are matrices (see
      as `root`'s ``muon_weight_dimension_numbers``); None: every 2-D leaf.
    spectra: ``{(min, max): [singular values of one matrix, ...]}``.
  """

  max_per_shape: int = 64
  weight_dimension_numbers: Any = None
  spectra: dict = dataclasses.field(default_factory=dict)

  def record(self, tree: Any) -> None:
    """Adds the singular values of every matrix of ``tree``."""
    leaves = jax.tree.leaves(tree)
    dims = dimensions.resolve(self.weight_dimension_numbers, tree)
    for leaf, dim in zip(leaves, dims):
      if dim is None:
        continue
      mats = np.asarray(dimensions.to_matrices(leaf, dim), np.float64)
      key = coefficients.shape_key(mats.shape[-2:])
      bucket = self.spectra.setdefault(key, [])
      bucket.extend(matrix_singular_values(mats))
      del bucket[:-self.max_per_shape]

  def save(self, path: str) -> None:
    """Writes the spectra to a ``.npz`` file (`load` reads it back)."""
    arrays = {f"{m}x{n}": np.stack(v) for (m, n), v in self.spectra.items()}
    np.savez(path, **arrays)

  @classmethod
  def load(cls, path: str, max_per_shape: int = 64) -> "SpectrumRecorder":
    """Reads spectra written by `save`."""
    with np.load(path) as data:
      spectra = {coefficients.shape_key(k): list(data[k]) for k in data.files}
    return cls(max_per_shape=max_per_shape, spectra=spectra)


def recorded_values(spectra: Any, shape: Sequence[int] | str, *, normalization: str,
                    num_values: int, seed: int) -> Optional[np.ndarray]:
  """Normalised recorded singular values of ``shape``, resampled to ``num_values``.

  Args:
    spectra: A `SpectrumRecorder`, ``{shape: [singular values of one matrix,
      ...]}`` or None.
    shape: The matrix shape; orientation is irrelevant.
    normalization: ``'frobenius'`` or ``'schatten4'`` (`normalized_spectrum`).
    num_values: How many values to return (drawn uniformly, sorted).
    seed: Seed of the draw.

  Returns:
    The values, or None when ``spectra`` holds none for ``shape``.
  """
  if spectra is None:
    return None
  if isinstance(spectra, SpectrumRecorder):
    spectra = spectra.spectra
  found = {coefficients.shape_key(k): v for k, v in spectra.items()}.get(
      coefficients.shape_key(shape))
  if not found:
    return None
  values = np.concatenate([normalized_spectrum(s, normalization) for s in found])
  return _resample(values, num_values, np.random.default_rng(seed))


def weighted_values(gauss: np.ndarray, real: Optional[np.ndarray], real_fraction: float,
                    prior: Optional[np.ndarray] = None,
                    prior_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """A mix of spectra as one set of values, with weights summing to 1.

  ``prior`` gets ``prior_fraction``; the rest is split between ``real``
  (``real_fraction``) and ``gauss`` (paper Sec. 4.5: 1:3 real to random).

  Returns:
    ``(values, weights)``, the values concatenated in that order.
  """
  if real is None or real_fraction == 0.0:
    parts = [(gauss, 1.0)]
  elif real_fraction == 1.0:
    parts = [(real, 1.0)]
  else:
    parts = [(gauss, 1.0 - real_fraction), (real, real_fraction)]
  if prior is not None and prior_fraction > 0.0:
    parts = [(v, share * (1.0 - prior_fraction)) for v, share in parts]
    parts.append((prior, prior_fraction))
  parts = [(v, share) for v, share in parts if share > 0.0]
  x = np.concatenate([v for v, _ in parts])
  w = np.concatenate([np.full(v.size, share / v.size) for v, share in parts])
  return x, w
