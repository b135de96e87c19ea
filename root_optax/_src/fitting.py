"""The fit behind `calibration.calibrate`, for one set of values.

From several starting sets (`initial_sets`), Levenberg-Marquardt (or an optax
optimiser) minimises one objective over ``(T, 3)`` coefficients: the weighted
Eq. 4 error ``sum_i w_i (g^(T)(x_i) - 1)^2`` over normalised singular values
``x_i``, plus ``PENALTY_WEIGHT`` times the mean squared excursion of
``g^(T)`` outside ``[0, band]`` on `GRID`. In one-triple mode (``tied``) one
row is learnt and used at every step. The fitted and the starting sets then
compete: the safe one with the lowest error wins (`best_safe_fit`).
"""

import functools
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from root_optax._src import coefficients
from root_optax._src import polynomials

PENALTY_WEIGHT = 100.0
# Penalty grid: uniform on [0, 1] plus a log-spaced part near 0, where
# overshooting polynomials peak (Muon's at 0.004).
GRID = np.unique(np.concatenate([np.linspace(0.0, 1.0, 2049), np.geomspace(1e-5, 0.1, 512)]))
# Levenberg-Marquardt: initial damping, its bounds, and the relative decrease
# of the cost below which the fit has converged.
_DAMPING = 1e-3
_MIN_DAMPING, _MAX_DAMPING = 1e-9, 1e8
_TOLERANCE = 1e-9
_DECIMALS = 6  # fitted coefficients are stored with this many decimals
# With a nearby shipped 'ada' entry, Levenberg-Marquardt starts from these only.
_LM_STARTS = ("polar_express", "ada_nearest")
# Polar Express (Amsel et al., 2025), first five steps: a fast start for
# spectra that reach far below 1 (square shapes).
_POLAR_EXPRESS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
)


def initial_sets(ns_steps: int, per_iteration: bool,
                 key: Optional[coefficients.ShapeKey] = None) -> dict[str, np.ndarray]:
  """``(T, 3)`` starting sets; in one-triple mode each is its first triple repeated.

  Muon's, the paper's 2048x2048, the classic and the Polar Express
  coefficients; with a shape ``key``, the shipped ``'ada'`` entry of the
  nearest shape (Schatten-4) too: from it, square shapes converge in a few steps.
  """
  load = coefficients.load_coefficients
  inits = {"muon": load("muon").default, "paper_2048": load("paper").shapes[(2048, 2048)],
           "classic": load("classic").default, "polar_express": np.asarray(_POLAR_EXPRESS)}
  if key is not None:
    ada = load("ada")
    inits["ada_nearest"] = ada.shapes[coefficients.nearest_key(key, ada.shapes)]
  out = {}
  for name, rows in inits.items():
    out[name] = polynomials.steps_schedule(rows[:ns_steps] if per_iteration else rows[:1], ns_steps)
  return out


def objective(coeffs: jax.Array, x: jax.Array, w: jax.Array, band) -> jax.Array:
  """The objective for a ``(T, 3)`` schedule, in JAX (differentiable)."""
  mse = jnp.sum(w * jnp.square(polynomials.compose(coeffs, x) - 1.0))
  y = polynomials.compose(coeffs, jnp.asarray(GRID, x.dtype))
  penalty = jnp.mean(jnp.square(jax.nn.relu(y - band)) + jnp.square(jax.nn.relu(-y)))
  return mse + PENALTY_WEIGHT * penalty


@functools.lru_cache(maxsize=16)
def _optax_fitter(num_steps: int, optimizer: Optional[optax.GradientTransformation]):
  """A jitted fit from many initial sets at once (vmapped), compiled once per setting.

  The band and one-triple mode are traced arguments, so that changing them
  does not recompile; in one-triple mode only row 0 is used (and learnt).
  """
  opt = optax.lbfgs() if optimizer is None else optimizer

  def run(c0, xs, ws, band, tied):
    def f(c):
      c = jnp.where(tied, jnp.broadcast_to(c[:1], c.shape), c)
      return objective(c, xs, ws, band)

    def body(carry, _):
      c, state = carry
      value, grad = jax.value_and_grad(f)(c)
      updates, state = opt.update(grad, state, c, value=value, grad=grad, value_fn=f)
      return (optax.apply_updates(c, updates), state), None

    (c, _), _ = jax.lax.scan(body, (c0, opt.init(c0)), None, length=num_steps)
    return c

  return jax.jit(jax.vmap(run, in_axes=(0, None, None, None, None)))


def fit_optax(inits, x, w, band, per_iteration, optimizer, num_steps) -> np.ndarray:
  """Runs ``optimizer`` from every ``(T, 3)`` initial set of ``inits``, in float32."""
  fit = _optax_fitter(num_steps, optimizer)
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
    y = polynomials.quintic(y, a, b, c)
  return y, jac


def _residuals(coeffs, x, sqrt_w, band, tied):
  """Residuals (and Jacobian) of `objective`: weighted errors, then band penalties."""
  y, jac = _iterates_and_jacobian(coeffs, x, tied)
  yg, jac_g = _iterates_and_jacobian(coeffs, GRID, tied)
  scale = math.sqrt(PENALTY_WEIGHT / GRID.size)
  over, under = (yg > band)[:, None], (yg < 0)[:, None]
  r = np.concatenate([sqrt_w * (y - 1.0), scale * np.where(over[:, 0], yg - band, 0.0),
                      scale * np.where(under[:, 0], yg, 0.0)])
  j = np.concatenate([sqrt_w[:, None] * jac, scale * jac_g * over, scale * jac_g * under])
  return r, j


def _levenberg_marquardt(c0, x, w, ns_steps, band, per_iteration, num_steps):
  """Minimises `objective` from ``c0`` by Levenberg-Marquardt, in float64 NumPy.

  The objective is a sum of squares of 15 coefficients (5 with one triple), so
  a damped Gauss-Newton step solves a 15x15 system: no compilation, ~10 ms an
  iteration, and bit-identical results in every process.
  """
  tied = not per_iteration
  full = lambda p: np.repeat(p.reshape(1, 3), ns_steps, 0) if tied else p.reshape(ns_steps, 3)
  p = (c0[:1] if tied else c0).ravel().copy()
  sqrt_w = np.sqrt(w)
  r, j = _residuals(full(p), x, sqrt_w, band, tied)
  cost, damping = float(r @ r), _DAMPING
  for _ in range(num_steps):
    normal, grad = j.T @ j, j.T @ r
    if not (math.isfinite(cost) and np.all(np.isfinite(normal))):
      break  # diverged start: its result is dropped by the safety check
    while damping < _MAX_DAMPING:
      step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-12), -grad)
      r_new, j_new = _residuals(full(p + step), x, sqrt_w, band, tied)
      cost_new = float(r_new @ r_new)
      if math.isfinite(cost_new) and cost_new < cost:
        converged = cost - cost_new <= _TOLERANCE * cost
        p, r, j, cost, damping = p + step, r_new, j_new, cost_new, max(damping / 3, _MIN_DAMPING)
        break
      damping *= 4
    else:
      break
    if converged:
      break
  return full(p)


def fit_levenberg_marquardt(inits, x, w, ns_steps, band, per_iteration, num_steps) -> np.ndarray:
  """Runs `_levenberg_marquardt` from every ``(T, 3)`` initial set of ``inits``."""
  with np.errstate(over="ignore", invalid="ignore"):
    fitted = np.stack([_levenberg_marquardt(c, x, w, ns_steps, band, per_iteration, num_steps)
                       for c in inits])
  return fitted if per_iteration else fitted[:, :1]


def select_safe(candidates: dict[str, np.ndarray], x, w, ns_steps, max_gain):
  """``(name, loss, coefficients, safety)`` of the safe candidate with the lowest error.

  The error is the weighted Eq. 4 objective in float64, without the penalty;
  safety is `polynomials.check_safety` with ``max_gain``.
  """
  best = None
  for name, c in candidates.items():
    if not np.all(np.isfinite(c)):
      continue
    safety = polynomials.check_safety(c, ns_steps, max_gain)
    if not safety.safe:
      continue
    loss = float(np.sum(w * (polynomials.composed_polynomial(c, x, ns_steps) - 1.0) ** 2))
    if best is None or loss < best[1]:
      best = (name, loss, c, safety)
  return best


def best_safe_fit(inits: dict[str, np.ndarray], x, w, *, ns_steps: int, band: float,
                  max_gain: float, per_iteration: bool, num_steps: int,
                  optimizer: Optional[optax.GradientTransformation]):
  """Fits from ``inits`` and returns `select_safe` of the fitted and the starting sets.

  ``optimizer`` None: Levenberg-Marquardt (from two starts when the nearest
  ``'ada'`` entry is one); otherwise that optax optimiser, from every start.
  """
  if optimizer is None:
    # From a nearby shipped fit, two starts suffice; the others stay candidates.
    fit_from = [n for n in inits if n in _LM_STARTS] if "ada_nearest" in inits else list(inits)
    fitted = fit_levenberg_marquardt(np.stack([inits[n] for n in fit_from]), x, w, ns_steps, band,
                                     per_iteration, num_steps)
  else:
    fit_from = list(inits)
    fitted = fit_optax(np.stack(list(inits.values())), x, w, band, per_iteration, optimizer,
                       num_steps)
  # Rounded before the safety check, so that what is checked is what is stored.
  candidates = {f"{name}+fit": np.round(c, _DECIMALS) for name, c in zip(fit_from, fitted)}
  # The starting sets compete too; Muon's triple is safe, so there is always one.
  candidates.update({k: v if per_iteration else v[:1] for k, v in inits.items()})
  return select_safe(candidates, x, w, ns_steps, max_gain)
