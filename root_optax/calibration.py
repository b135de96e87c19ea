"""Calibration of shape-specific Newton-Schulz coefficients (AdaNewton, Eq. 4).

Newton-Schulz acts on each normalised singular value ``s`` of its input through
the scalar map ``g^(T)(s) = g_T(...g_1(s))`` with ``g_t(x) = a_t x + b_t x^3 +
c_t x^5`` (paper Eq. 3). So fitting coefficients needs no matrix iteration:
only the singular values. `calibrate` minimises the paper's Eq. 4 objective

    mean over s of (g^(T)(s) - 1)^2

over the normalised spectra of a matrix shape (Gaussian matrices of that shape,
recorded momenta, or a mix; paper Sec. 4.5) by Levenberg-Marquardt in NumPy
(or, on request, ``jax.grad`` and an optax optimiser), one triple for all steps
(the paper) or one per step (Polar Express). A fitted set is accepted only if it is *safe*: its
composed polynomial keeps every input of [0, 1] inside the band
``[0, max_gain]`` after T steps (`check_safety`), so no spectrum, fitted or
not, can blow up. Results are cached in memory (`clear_cache`) and optionally
on disk (``cache_dir``).
"""

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax import _validation
from root_optax import coefficients as coefficients_lib
from root_optax import dimensions

ShapeKey = coefficients_lib.ShapeKey
logger = logging.getLogger("root_optax")
# Normalisations whose effect is a function of the singular values alone.
CALIBRATION_NORMALIZATIONS = ("frobenius", "schatten4")
# Paper Sec. 4.5: "Mixed (1:3)", real : random spectra, is the published choice.
PAPER_REAL_FRACTION = 0.25
# How far below max_gain the fit aims, so that the final dense check passes.
_BAND_MARGIN = 0.05
_PENALTY_WEIGHT = 100.0
# Penalty grid: uniform on [0, 1] plus a log-spaced part near 0, where
# overshooting polynomials peak (Muon's at 0.004).
_GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 2049), np.geomspace(1e-5, 0.1, 512)]))
_DECIMALS = 6  # fitted coefficients are stored with this many decimals
_LM_STARTS = ("polar_express", "ada_nearest")
_INITS = {
    "muon": [coefficients_lib.MUON_COEFFICIENTS],
    "paper_2048": [(3.3334, -4.2591, 1.7791)],
    "classic": [(1.875, -1.25, 0.375)],
    # Polar Express (Amsel et al., 2025), first five steps: a fast start for
    # spectra that reach far below 1 (square shapes).
    "polar_express": [
        (8.28721201814563, -23.595886519098837, 17.300387312530933),
        (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
        (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
        (3.3184196573706015, -2.488488024314874, 0.51004894012372),
        (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    ],
}


# ----------------------------------------------------------------------------
# Spectra and the objective.


def normalized_spectrum(singular_values: np.ndarray, normalization: str = "frobenius") -> np.ndarray:
  """Singular values as Newton-Schulz sees them after normalisation.

  ``'frobenius'``: ``s / ||s||_2`` (``X / ||X||_F``); ``'schatten4'``:
  ``s / ||s||_4`` (``X / ||X||_{S4}``). Both lie in [0, 1]; zero stays zero.
  """
  _validation.one_of("normalization", normalization, CALIBRATION_NORMALIZATIONS)
  s = np.abs(np.asarray(singular_values, np.float64).ravel())
  top = s.max(initial=0.0)
  if top == 0.0:
    return s
  r = s / top  # no overflow for huge singular values
  p = 2.0 if normalization == "frobenius" else 4.0
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
  return float(np.mean((coefficients_lib.composed_polynomial(coeffs, x, ns_steps) - 1.0) ** 2))


def gaussian_spectra(shape: Sequence[int], *, num_values: int = 4096, seed: int = 0,
                     normalization: str = "frobenius", max_sample_dim: int = 512) -> np.ndarray:
  """Normalised singular values of i.i.d. standard normal matrices of ``shape``.

  Enough matrices are drawn to give at least ``num_values`` values, of which
  exactly ``num_values`` are kept (uniformly at random). Shapes
  whose smaller side exceeds ``max_sample_dim`` are sampled at the same aspect
  ratio with smaller side ``max_sample_dim`` and rescaled: a normalised
  Gaussian spectrum scales as ``min^(-1/2)`` (Frobenius) or ``min^(-1/4)``
  (Schatten-4) at a fixed aspect ratio (Marchenko-Pastur), which keeps
  calibrating 8192x8192 as cheap as 1024x1024.
  """
  m, n = coefficients_lib.shape_key(shape)
  small = min(m, max_sample_dim)
  large = max(small, round(n * small / m))
  power = 0.5 if normalization == "frobenius" else 0.25
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


def _compose(coeffs: jax.Array, x: jax.Array, ns_steps: int) -> list[jax.Array]:
  """The iterates ``g_1(x), ..., g_T(x)`` (a single triple is repeated)."""
  out = []
  for t in range(ns_steps):
    a, b, c = (coeffs[min(t, coeffs.shape[0] - 1), j] for j in range(3))
    x2 = x * x
    x = x * (a + x2 * (b + c * x2))
    out.append(x)
  return out


def _objective(coeffs, x, w, ns_steps, band):
  """Weighted Eq. 4 objective plus a penalty for leaving ``[0, band]`` on [0, 1]."""
  mse = jnp.sum(w * jnp.square(_compose(coeffs, x, ns_steps)[-1] - 1.0))
  y = _compose(coeffs, jnp.asarray(_GRID, x.dtype), ns_steps)[-1]
  penalty = jnp.mean(jnp.square(jax.nn.relu(y - band)) + jnp.square(jax.nn.relu(-y)))
  return mse + _PENALTY_WEIGHT * penalty


# ----------------------------------------------------------------------------
# Safety.


@dataclasses.dataclass(frozen=True)
class SafetyReport:
  """Whether ``0 <= g^(T)(x) <= max_gain`` for every x in [0, 1].

  Attributes:
    safe: The verdict.
    envelope: `coefficients.polynomial_envelope` (max of ``|g^(T)|`` on [0, 1]).
    min_signed: The minimum of ``g^(T)`` on the same grid (a negative value
      flips the sign of a singular direction).
    max_gain: The upper end of the band.
  """

  safe: bool
  envelope: coefficients_lib.Envelope
  min_signed: float
  max_gain: float


def check_safety(coeffs, ns_steps: int = 5, max_gain: float = coefficients_lib.DEFAULT_MAX_GAIN,
                 num_points: int = 200_001) -> SafetyReport:
  """Checks that T steps keep every normalised singular value in ``[0, max_gain]``.

  The normalised singular values of any input lie in [0, 1] (Frobenius and
  Schatten-4 normalisation both guarantee it), so a set that passes cannot
  amplify any direction of any matrix more than ``max_gain`` times the ideal
  1, whatever its spectrum. Checked on a uniform grid of ``num_points``.

  Args:
    coeffs: ``(3,)`` or ``(T, 3)`` coefficients.
    ns_steps: Newton-Schulz steps; a shorter per-iteration list repeats its last triple.
    max_gain: Upper end of the band (default 1.5: Muon peaks at 1.20, the
      authors' 2048x2048 triple at 3.31).
    num_points: Grid size.

  Returns:
    A `SafetyReport`.
  """
  _validation.at_least("max_gain", max_gain, 1.0)
  env = coefficients_lib.polynomial_envelope(coeffs, ns_steps, num_points=num_points)
  y = coefficients_lib.composed_polynomial(coeffs, np.linspace(0.0, 1.0, num_points), ns_steps)
  min_signed = float(np.min(y))
  safe = math.isfinite(env.max_value) and env.max_value <= max_gain and min_signed >= 0.0
  return SafetyReport(bool(safe), env, min_signed, float(max_gain))


# ----------------------------------------------------------------------------
# Recording real momentum spectra.


@dataclasses.dataclass
class SpectrumRecorder:
  """Collects singular values of the matrices of a pytree, keyed ``(min, max)``.

  Call `record` on what Newton-Schulz will see (the momentum, or the clipped
  momentum with ROOT) every few training steps, then pass the recorder (or its
  ``spectra``) to `calibrate` as real spectra. Nothing is recorded inside
  ``jit``: `record` pulls the arrays to the host.

  Attributes:
    max_per_shape: Keep at most this many matrices per shape (the latest).
    weight_dimension_numbers: Which leaves are matrices (see
      `root_optax.dimensions.resolve`); None: every 2-D leaf.
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
      key = coefficients_lib.shape_key(mats.shape[-2:])
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
      spectra = {coefficients_lib.shape_key(k): list(data[k]) for k in data.files}
    return cls(max_per_shape=max_per_shape, spectra=spectra)


# ----------------------------------------------------------------------------
# Fitting.


@dataclasses.dataclass(frozen=True)
class CalibrationResult:
  """Coefficients fitted for one shape.

  Attributes:
    shape: ``(min, max)``.
    coefficients: ``(T, 3)`` (per iteration) or ``(1, 3)``.
    loss: Eq. 4 objective on the calibration spectra (no penalty).
    safety: The `SafetyReport` of ``coefficients``.
    start: Name of the initialisation the chosen set came from.
    seconds: Wall time of the fit (0 when served from a cache).
  """

  shape: ShapeKey
  coefficients: np.ndarray
  loss: float
  safety: SafetyReport
  start: str
  seconds: float


_CACHE: dict = {}


def clear_cache() -> None:
  """Forgets every result `calibrate` has cached in memory.

  Compiled fitting programs (a few, keyed by ``ns_steps`` and ``num_steps``)
  stay in JAX's compilation cache; `jax.clear_caches` drops them.
  """
  _CACHE.clear()


def _real_values(spectra, key, normalization, num_values, seed) -> Optional[np.ndarray]:
  """Normalised recorded spectra of ``key``, resampled to ``num_values`` values."""
  if spectra is None:
    return None
  if isinstance(spectra, SpectrumRecorder):
    spectra = spectra.spectra
  found = {coefficients_lib.shape_key(k): v for k, v in spectra.items()}.get(key)
  if not found:
    return None
  values = np.concatenate([normalized_spectrum(s, normalization) for s in found])
  return _resample(values, num_values, np.random.default_rng(seed))


def _weighted_values(gauss: np.ndarray, real: Optional[np.ndarray], real_fraction: float,
                     prior: Optional[np.ndarray] = None, prior_fraction: float = 0.0):
  """Concatenated values and weights summing to 1.

  ``prior`` gets ``prior_fraction``; the rest is split between ``real``
  (``real_fraction``) and ``gauss``.
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


def _initial_sets(ns_steps: int, per_iteration: bool,
                  key: Optional[ShapeKey] = None) -> dict[str, np.ndarray]:
  """``(T, 3)`` starting sets; in one-triple mode each is its first triple repeated.

  With a shape ``key``, the shipped ``'ada'`` entry of the nearest shape
  (Schatten-4) is a start too: from it, square shapes converge in a few steps.
  """
  inits = dict(_INITS)
  if key is not None:
    ada = coefficients_lib.load_coefficients("ada")
    inits["ada_nearest"] = ada.shapes[coefficients_lib.nearest_key(key, ada.shapes)]
  out = {}
  for name, rows in inits.items():
    rows = np.asarray(rows[:ns_steps] if per_iteration else rows[:1])
    out[name] = coefficients_lib.steps_schedule(rows, ns_steps)
  return out


@functools.lru_cache(maxsize=16)
def _fitter(ns_steps: int, num_steps: int, optimizer: Optional[optax.GradientTransformation]):
  """A jitted fit from many initial sets at once (vmapped), compiled once per setting.

  The band and one-triple mode are traced arguments, so that changing them
  does not recompile; in one-triple mode only row 0 is used (and learnt).
  """
  opt = optax.lbfgs() if optimizer is None else optimizer

  def run(c0, xs, ws, band, tied):
    def f(c):
      c = jnp.where(tied, jnp.broadcast_to(c[:1], c.shape), c)
      return _objective(c, xs, ws, ns_steps, band)

    def body(carry, _):
      c, state = carry
      value, grad = jax.value_and_grad(f)(c)
      updates, state = opt.update(grad, state, c, value=value, grad=grad, value_fn=f)
      return (optax.apply_updates(c, updates), state), None

    (c, _), _ = jax.lax.scan(body, (c0, opt.init(c0)), None, length=num_steps)
    return c

  return jax.jit(jax.vmap(run, in_axes=(0, None, None, None, None)))


def _fit_all(inits, x, w, ns_steps, band, per_iteration, optimizer, num_steps) -> np.ndarray:
  """Runs the optimiser from every ``(T, 3)`` initial set, in float32."""
  fit = _fitter(ns_steps, num_steps, optimizer)
  as32 = lambda v: jnp.asarray(v, jnp.float32)
  fitted = np.asarray(fit(as32(inits), as32(x), as32(w), as32(band), not per_iteration), np.float64)
  return fitted if per_iteration else fitted[:, :1]


def _iterates_and_jacobian(coeffs: np.ndarray, x: np.ndarray, tied: bool):
  """``g^(T)(x)`` and its Jacobian in the coefficients (forward mode, Eq. 3)."""
  y = np.array(x, np.float64)
  jac = np.zeros((y.size, 3 if tied else coeffs.size))
  for t, (a, b, c) in enumerate(coeffs):
    y2 = y * y
    jac *= (a + y2 * (3 * b + 5 * c * y2))[:, None]  # chain rule: g_t'(y) = a + 3b y^2 + 5c y^4
    col = 0 if tied else 3 * t
    jac[:, col:col + 3] += np.stack([y, y * y2, y * y2 * y2], axis=1)
    y = y * (a + y2 * (b + c * y2))
  return y, jac


def _residuals(coeffs, x, sqrt_w, band, tied):
  """Residuals (and Jacobian) of `_objective`: weighted errors, then band penalties."""
  y, jac = _iterates_and_jacobian(coeffs, x, tied)
  yg, jac_g = _iterates_and_jacobian(coeffs, _GRID, tied)
  scale = math.sqrt(_PENALTY_WEIGHT / _GRID.size)
  over, under = (yg > band)[:, None], (yg < 0)[:, None]
  r = np.concatenate([sqrt_w * (y - 1.0), scale * np.where(over[:, 0], yg - band, 0.0),
                      scale * np.where(under[:, 0], yg, 0.0)])
  j = np.concatenate([sqrt_w[:, None] * jac, scale * jac_g * over, scale * jac_g * under])
  return r, j


def _levenberg_marquardt(c0, x, w, ns_steps, band, per_iteration, num_steps):
  """Minimises `_objective` from ``c0`` by Levenberg-Marquardt, in float64 NumPy.

  The objective is a sum of squares of 15 coefficients (5 with one triple), so
  a damped Gauss-Newton step solves a 15x15 system: no compilation, ~10 ms an
  iteration, and bit-identical results in every process.
  """
  tied = not per_iteration
  full = lambda p: np.repeat(p.reshape(1, 3), ns_steps, 0) if tied else p.reshape(ns_steps, 3)
  p = (c0[:1] if tied else c0).ravel().copy()
  sqrt_w = np.sqrt(w)
  r, j = _residuals(full(p), x, sqrt_w, band, tied)
  cost, damping = float(r @ r), 1e-3
  for _ in range(num_steps):
    normal, grad = j.T @ j, j.T @ r
    if not (math.isfinite(cost) and np.all(np.isfinite(normal))):
      break  # diverged start: its result is dropped by the safety check
    while damping < 1e8:
      step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -grad)
      r_new, j_new = _residuals(full(p + step), x, sqrt_w, band, tied)
      cost_new = float(r_new @ r_new)
      if math.isfinite(cost_new) and cost_new < cost:
        converged = cost - cost_new <= 1e-9 * cost
        p, r, j, cost, damping = p + step, r_new, j_new, cost_new, max(damping / 3, 1e-9)
        break
      damping *= 4
    else:
      break
    if converged:
      break
  return full(p)


def _fit_lm(inits, x, w, ns_steps, band, per_iteration, num_steps) -> np.ndarray:
  with np.errstate(over="ignore", invalid="ignore"):
    fitted = np.stack([_levenberg_marquardt(c, x, w, ns_steps, band, per_iteration, num_steps)
                       for c in inits])
  return fitted if per_iteration else fitted[:, :1]


def _select(candidates: dict[str, np.ndarray], x, w, ns_steps, max_gain):
  """The safe candidate with the lowest objective (float64)."""
  best = None
  for name, c in candidates.items():
    if not np.all(np.isfinite(c)):
      continue
    safety = check_safety(c, ns_steps, max_gain)
    if not safety.safe:
      continue
    loss = float(np.sum(w * (coefficients_lib.composed_polynomial(c, x, ns_steps) - 1.0) ** 2))
    if best is None or loss < best[1]:
      best = (name, loss, c, safety)
  return best


def _cache_key(key, settings: dict, real: Optional[np.ndarray]) -> str:
  digest = hashlib.sha1(json.dumps([list(key), settings], sort_keys=True).encode())
  if real is not None:
    digest.update(np.ascontiguousarray(real).tobytes())
  return digest.hexdigest()


def _read_disk_cache(cache_dir, digest, key):
  path = os.path.join(cache_dir, f"{digest}.json")
  try:
    with open(path) as f:
      d = json.load(f)
    c = coefficients_lib.as_coefficient_array(d["coefficients"])
  except (OSError, ValueError, KeyError):
    return None  # missing, unreadable or half-written by another process: fit again
  return CalibrationResult(key, c, d["loss"], check_safety(c, d["ns_steps"], d["max_gain"]),
                           d["start"], 0.0)


_UNWRITABLE: set = set()


def _write_disk_cache(cache_dir, digest, result: CalibrationResult, settings):
  """Writes atomically (a process reading it sees all or nothing); a directory
  that cannot be written is reported once and the result kept in memory."""
  d = {"coefficients": result.coefficients.tolist(), "loss": result.loss, "start": result.start,
       "ns_steps": settings["ns_steps"], "max_gain": settings["max_gain"], "settings": settings}
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = os.path.join(cache_dir, f".{digest}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
      json.dump(d, f)
    os.replace(tmp, os.path.join(cache_dir, f"{digest}.json"))
  except OSError as e:
    if cache_dir not in _UNWRITABLE:
      _UNWRITABLE.add(cache_dir)
      logger.info("calibration cache %s is not writable (%s); keeping "
                  "calibrated coefficients in memory only", cache_dir, e.strerror or e)


def _validate(ns_steps, normalization, real_fraction, max_gain, num_values, num_steps):
  _validation.positive_int("ns_steps", ns_steps)
  _validation.one_of("normalization", normalization, CALIBRATION_NORMALIZATIONS)
  _validation.in_range("real_fraction", real_fraction, 0.0, 1.0)
  _validation.at_least("max_gain", max_gain, 1.0 + _BAND_MARGIN)
  _validation.positive_int("num_values", num_values)
  _validation.positive_int("num_steps", num_steps)


def calibrate_shape(
    shape: Sequence[int] | str,
    *,
    ns_steps: int = 5,
    per_iteration: bool = True,
    normalization: str = "schatten4",
    spectra: Any = None,
    real_fraction: float = PAPER_REAL_FRACTION,
    prior_fraction: float = 0.0,
    prior_min: float = 1e-3,
    seed: int = 0,
    num_values: int = 4096,
    max_sample_dim: int = 512,
    max_gain: float = coefficients_lib.DEFAULT_MAX_GAIN,
    num_steps: int = 100,
    optimizer: Optional[optax.GradientTransformation] = None,
    cache: bool = True,
    cache_dir: Optional[str] = None,
) -> CalibrationResult:
  """Fits Newton-Schulz coefficients for one matrix shape; see `calibrate`."""
  _validate(ns_steps, normalization, real_fraction, max_gain, num_values, num_steps)
  _validation.in_range("prior_fraction", prior_fraction, 0.0, 1.0, high_open=True)
  _validation.in_range("prior_min", prior_min, 0.0, 1.0, low_open=True, high_open=True)
  key = coefficients_lib.shape_key(shape)
  real = _real_values(spectra, key, normalization, num_values, seed)
  settings = dict(ns_steps=ns_steps, per_iteration=per_iteration, normalization=normalization,
                  real_fraction=real_fraction if real is not None else 0.0,
                  prior_fraction=prior_fraction, prior_min=prior_min, seed=seed,
                  num_values=num_values, max_sample_dim=max_sample_dim, max_gain=max_gain,
                  num_steps=num_steps)
  use_cache = cache and optimizer is None  # a custom optimiser has no stable identity
  digest = _cache_key(key, settings, real)
  if use_cache and digest in _CACHE:
    return dataclasses.replace(_CACHE[digest], seconds=0.0)
  if use_cache and cache_dir and (hit := _read_disk_cache(cache_dir, digest, key)):
    _CACHE[digest] = hit
    return hit
  start = time.perf_counter()
  gauss = gaussian_spectra(key, num_values=num_values, seed=seed, normalization=normalization,
                           max_sample_dim=max_sample_dim)
  prior = np.geomspace(prior_min, 1.0, num_values) if prior_fraction > 0.0 else None
  x, w = _weighted_values(gauss, real, real_fraction, prior, prior_fraction)
  inits = _initial_sets(ns_steps, per_iteration, key if normalization == "schatten4" else None)
  band = max_gain - _BAND_MARGIN
  if optimizer is None:
    # From a nearby shipped fit, two starts suffice; the others stay candidates.
    fit_from = [n for n in inits if n in _LM_STARTS] if "ada_nearest" in inits else list(inits)
    starts = np.stack([inits[n] for n in fit_from])
    fitted = _fit_lm(starts, x, w, ns_steps, band, per_iteration, num_steps)
  else:
    fit_from = list(inits)
    fitted = _fit_all(np.stack(list(inits.values())), x, w, ns_steps, band, per_iteration,
                      optimizer, num_steps)
  # Rounded before the safety check, so that what is checked is what is stored.
  candidates = {f"{name}+fit": np.round(c, _DECIMALS) for name, c in zip(fit_from, fitted)}
  # The starting sets compete too; Muon's triple is safe, so there is always one.
  candidates.update({k: v if per_iteration else v[:1] for k, v in inits.items()})
  name, loss, coeffs, safety = _select(candidates, x, w, ns_steps, max_gain)
  result = CalibrationResult(key, coeffs, loss, safety, name, time.perf_counter() - start)
  if use_cache:
    _CACHE[digest] = result
    if cache_dir:
      _write_disk_cache(cache_dir, digest, result, settings)
  return result


def calibrate(
    shapes: Sequence[Sequence[int] | str],
    *,
    ns_steps: int = 5,
    per_iteration: bool = True,
    normalization: str = "schatten4",
    spectra: Any = None,
    real_fraction: float = PAPER_REAL_FRACTION,
    prior_fraction: float = 0.0,
    prior_min: float = 1e-3,
    seed: int = 0,
    num_values: int = 4096,
    max_sample_dim: int = 512,
    max_gain: float = coefficients_lib.DEFAULT_MAX_GAIN,
    num_steps: int = 100,
    optimizer: Optional[optax.GradientTransformation] = None,
    cache: bool = True,
    cache_dir: Optional[str] = None,
    name: str = "calibrated",
    default: Any = coefficients_lib.MUON_COEFFICIENTS,
    fallback: str = coefficients_lib.NEAREST,
    progress: Optional[Callable[[CalibrationResult], None]] = None,
) -> coefficients_lib.CoefficientTable:
  r"""Learns Newton-Schulz coefficients per matrix shape (AdaNewton calibration).

  For each shape, minimises the paper's Eq. 4 objective
  ``mean_s (g^(T)(s) - 1)^2`` over normalised singular values ``s`` (Gaussian
  matrices of the shape, mixed with recorded real spectra at
  ``real_fraction``) by Levenberg-Marquardt (or ``optimizer``), starting from
  the Polar Express coefficients and the nearest shipped ``'ada'`` entry
  (Schatten-4), or from Muon's, the paper's, the classic and the Polar Express
  coefficients (Frobenius), plus a penalty
  that keeps the composed polynomial in ``[0, max_gain - 0.05]`` on [0, 1].
  The best *safe* set (`check_safety`) is kept; the starting sets are
  candidates too, so the result is never worse than Muon's triple on the
  calibration spectra. Deterministic given ``seed``; results are cached.

  Args:
    shapes: Matrix shapes, ``(rows, cols)`` or ``'768x3072'``; orientation is
      irrelevant (keys are ``(min, max)``).
    ns_steps: Newton-Schulz steps T the coefficients are fitted for.
    per_iteration: One triple per step (default) or one for all steps (paper).
    normalization: ``'schatten4'`` (default; ~5x lower error on square
      shapes) or ``'frobenius'`` (the paper's). Stored in the table, and used
      by `ada_newton_orthogonalize` when its ``normalization`` is None.
    spectra: Real spectra: a `SpectrumRecorder` or ``{shape: [singular values
      of one matrix, ...]}``. Shapes without any use Gaussian spectra only.
    real_fraction: Share of the objective on real spectra (paper: 1:3, 0.25).
    prior_fraction: Share of the objective on a log-uniform spectrum over
      ``[prior_min, 1]``, in [0, 1): a stand-in for heavy-tailed real momenta
      when none are recorded (Gaussian spectra alone give coefficients that
      do not lift small singular values; see docs/calibration.md).
    prior_min: Lower end of that spectrum, in (0, 1).
    seed: Seed of the Gaussian matrices.
    num_values: At least this many Gaussian singular values per shape.
    max_sample_dim: Larger shapes are sampled at this size and rescaled
      (`gaussian_spectra`).
    max_gain: Upper end of the safety band, > 1.05.
    num_steps: Iterations of the fit (at most; Levenberg-Marquardt stops
      when it converges).
    optimizer: None (Levenberg-Marquardt in float64 NumPy: no compilation,
      the same digits in every process) or an optax optimiser run under
      ``jax.grad`` (e.g. ``optax.lbfgs()``), called with ``value``, ``grad``
      and ``value_fn`` extra arguments; results with a custom optimiser are
      not cached.
    cache: Reuse results for identical settings (in memory; `clear_cache`).
    cache_dir: Also store results as JSON files in this directory.
    name: Name of the returned table.
    default: Coefficients of the table for shapes it does not hold.
    fallback: The table's rule for unknown shapes (`CoefficientTable`).
    progress: Called with each `CalibrationResult` as it is done.

  Returns:
    A `CoefficientTable` with one entry per shape.

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025, Eq. 4 and Sec. 4.5;
    Amsel et al., `The Polar Express <https://arxiv.org/abs/2505.16932>`_, 2025.
  """
  kwargs = dict(ns_steps=ns_steps, per_iteration=per_iteration, normalization=normalization,
                spectra=spectra, real_fraction=real_fraction, prior_fraction=prior_fraction,
                prior_min=prior_min, seed=seed, num_values=num_values,
                max_sample_dim=max_sample_dim, max_gain=max_gain, num_steps=num_steps,
                optimizer=optimizer, cache=cache, cache_dir=cache_dir)
  results = {}
  for shape in shapes:
    result = calibrate_shape(shape, **kwargs)
    results[result.shape] = result
    if progress is not None:
      progress(result)
  source = (f"root_optax.calibrate: {'per-iteration' if per_iteration else 'one triple'}, "
            f"T={ns_steps}, {normalization}, seed {seed}, real fraction "
            f"{real_fraction if spectra is not None else 0.0}, log-uniform prior "
            f"{prior_fraction} on [{prior_min}, 1], safety band [0, {max_gain}]")
  return coefficients_lib.CoefficientTable(
      name=name, default=coefficients_lib.as_coefficient_array(default),
      shapes={k: r.coefficients for k, r in results.items()}, normalization=normalization,
      source=source, fallback=fallback)
