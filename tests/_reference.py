"""Independent NumPy restatement of one ROOT step (from ../shared/REFERENCE.md).

Float64, no JAX: the library is checked against this, not against itself.
"""

import numpy as np

MUON = (3.4445, -4.7750, 2.0315)


def momentum(buf, g, mu=0.95, nesterov=True):
  buf = mu * buf + g
  return buf, (g + mu * buf if nesterov else buf)


def threshold(m, p=0.90):
  return np.quantile(np.abs(m), p) + 1e-9


def clip_outliers(m, eps):
  outliers = np.sign(m) * np.maximum(np.abs(m) - eps, 0.0)
  return m - outliers


def newton_schulz(b, coeffs, eps=1e-7):
  """``coeffs``: a list of (a, b, c), one per step."""
  x = b.T if b.shape[0] > b.shape[1] else b
  x = x / (np.linalg.norm(x) + eps)
  for a, bb, c in coeffs:
    gram = x @ x.T
    x = a * x + (bb * gram + c * gram @ gram) @ x
  return x.T if b.shape[0] > b.shape[1] else x


def root_matrix_step(w, g, buf, lr, coeffs, mu=0.95, p=0.90, wd=0.1, nesterov=True):
  """Returns (new_w, new_buf) for one matrix parameter."""
  buf, m = momentum(buf, g, mu, nesterov)
  u = newton_schulz(clip_outliers(m, threshold(m, p)), coeffs)
  w = w * (1 - lr * wd)
  return w - lr * 0.2 * np.sqrt(max(w.shape)) * u, buf


def gate(g, multiplier=3.0, p=0.90):
  """The robust variant's gradient gate: clip at ``multiplier * q_p(|g|)``."""
  return clip_outliers(g, multiplier * np.quantile(np.abs(g), p) + 1e-9)


def history_gate(g, rows, cols, k=10.0, decay=0.95):
  """The robust variant's gradient gate, entry by entry (float64 loops).

  ``rows``/``cols``: EMAs of the row/column means of ``|g| / mean|g|`` (all
  zero before the first step, which is gated against its own means and
  starts them). Returns
  (gated g, new rows, new cols).
  """
  m, n = g.shape
  s = np.mean(np.abs(g))
  if s == 0:
    return g.copy(), rows, cols
  first = np.mean(rows) == 0
  if first:  # gated against the matrix's own row and column means
    rows, cols = np.abs(g).mean(axis=1) / s, np.abs(g).mean(axis=0) / s
  out = np.empty_like(g)
  for i in range(m):
    for j in range(n):
      limit = k * s * rows[i] * cols[j] / np.mean(rows)
      out[i, j] = min(max(g[i, j], -limit), limit)
  a = np.abs(out) / s
  if first:
    return out, a.mean(axis=1), a.mean(axis=0)
  return out, decay * rows + (1 - decay) * a.mean(axis=1), decay * cols + (1 - decay) * a.mean(axis=0)


def burst_guard(g, ema, factor=4.0, decay=0.95):
  """Returns (g, new_ema, caught): rescale g to ``ema`` when ``||g|| > factor * ema``."""
  norm = np.linalg.norm(g)
  if ema == 0.0:
    return g, norm, False
  caught = norm > factor * ema
  new_ema = decay * ema + (1 - decay) * min(norm, factor * ema)
  return (g * ema / norm if caught else g), new_ema, caught


def robust_matrix_step(w, g, buf, ema, history, lr, coeffs, mu=0.95, wd=0.1, k=10.0, factor=4.0):
  """The robust variant: gate, burst guard, momentum, Newton-Schulz (no momentum clip).

  ``history``: the gate's ``(rows, cols)``. Returns (new_w, new_buf, new_ema, new_history, caught).
  """
  g, rows, cols = history_gate(g, *history, k=k)
  g, ema, caught = burst_guard(g, ema, factor)
  buf, m = momentum(buf, g, mu)
  u = newton_schulz(m, coeffs)
  w = w * (1 - lr * wd)
  return w - lr * 0.2 * np.sqrt(max(w.shape)) * u, buf, ema, (rows, cols), caught


def adamw_step(w, g, m, v, t, lr, b1=0.9, b2=0.95, eps=1e-8, wd=0.1):
  """PyTorch AdamW; ``t`` is the 1-based step. Returns (w, m, v)."""
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
  w = w * (1 - lr * wd)
  return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v
