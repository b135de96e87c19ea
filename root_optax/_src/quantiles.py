"""Quantiles of ``|m|`` over each matrix: by a full sort, or by counting passes.

The outlier threshold (`root_optax.outliers`) is a multiple of such a
quantile. ``'exact'`` sorts every matrix, as the reference does; ``'fast'``
(`fast_abs_quantiles`) finds the same order statistics by counting, with no
full sort (`quantile_search`).
"""

import jax
import jax.numpy as jnp

from root_optax._src import counting
from root_optax._src import quantile_search
from root_optax._src import stacking
from root_optax._src import validation

EXACT = "exact"  # a full sort (`exact_abs_quantile`)
FAST = "fast"  # the counting search (`fast_abs_quantiles`)
METHODS = (EXACT, FAST)



def exact_abs_quantile(m: jax.Array, quantile: jax.typing.ArrayLike) -> jax.Array:
  """``quantile(|m|, p)`` over the last two axes by a full sort.

  Linear interpolation between order statistics, as ``torch.quantile`` and
  ``numpy.quantile`` default to.

  Returns:
    An array of shape ``m.shape[:-2]``, in at least float32.
  """
  check_quantile_args([m], quantile)
  a = counting.abs_float32(m)
  flat = a.reshape(a.shape[:-2] + (-1,))
  return jnp.quantile(flat, quantile, axis=-1, method="linear")


def fast_abs_quantiles(ms: list[jax.Array], quantile: jax.typing.ArrayLike,
                       rank_tolerance: float = 0.0) -> list[jax.Array]:
  """``quantile(|m|, p)`` over the last two axes of each ``m``, without a full sort.

  A sorted sample of about 1024 entries per matrix places four probes
  around the order statistic ``p (n - 1)``; one counting pass brackets it
  between two of them. A safeguarded interpolation search (four probes per
  counting pass, passes shared by all matrices) then narrows the bracket.
  With ``rank_tolerance=0`` it goes on until one last pass reads the two
  order statistics around ``p (n - 1)``, then interpolates linearly: the
  value of `exact_abs_quantile` up to float rounding (rank error 0),
  whatever the sample. Otherwise it stops once an end of the bracket is
  within ``floor(rank_tolerance * n)`` entries of the quantile (or the
  bracket holds that few, and it interpolates inside), so at most that many
  entries lie between the result and the exact quantile; that result
  depends on the search path, so it is not continuous in ``m``.

  Args:
    ms: Arrays of at least two dimensions.
    quantile: ``p`` in [0, 1].
    rank_tolerance: Largest rank error allowed, as a fraction of each
      matrix's entries, in [0, 1).

  Returns:
    One float32 array of shape ``m.shape[:-2]`` per input.
  """
  check_quantile_args(ms, quantile)
  validation.in_range("rank_tolerance", rank_tolerance, 0.0, 1.0, high_open=True)
  stacks = [m.reshape((-1,) + m.shape[-2:]) for m in ms]
  values = quantile_search.search(stacks, quantile, rank_tolerance)
  return [v.reshape(m.shape[:-2]) for m, v in zip(ms, values)]


def stack_quantiles(stacks: dict, quantile, method: str, rank_tolerance) -> dict:
  """Per key, the quantile of each matrix of a ``(b, rows, cols)`` stack (a float32 vector)."""
  if method == EXACT:
    return {key: exact_abs_quantile(stack, quantile) for key, stack in stacks.items()}
  return dict(zip(stacks, quantile_search.search(list(stacks.values()), quantile, rank_tolerance)))


def check_quantile_args(ms, quantile) -> None:
  """Raises ValueError unless ``0 <= quantile <= 1`` and every ``m`` has two axes or more."""
  validation.in_range("quantile", quantile, 0.0, 1.0)
  for m in ms:
    if jnp.ndim(m) < 2:
      raise ValueError(f"quantiles are taken over the last two axes; got an array of shape {jnp.shape(m)}")


def abs_quantiles(ms: list[jax.Array], quantile, method: str = FAST,
                  rank_tolerance: float = 0.0) -> list[jax.Array]:
  """`exact_abs_quantile` or `fast_abs_quantiles` (within ``rank_tolerance``) for a list of matrix batches.

  Matrices of one shape and dtype (up to transposition) are stacked first
  (`stacking.plan`), so the compiled step holds one quantile computation per
  shape, not per leaf.

  Returns:
    One float32 array of shape ``m.shape[:-2]`` per input.
  """
  check_quantile_args(ms, quantile)
  validation.one_of("method", method, METHODS)
  validation.in_range("rank_tolerance", rank_tolerance, 0.0, 1.0, high_open=True)
  flat = [m.reshape((-1,) + m.shape[-2:]) for m in ms]
  plan = stacking.plan(flat)
  values = plan.cut(stack_quantiles(plan.stacks, quantile, method, rank_tolerance),
                    opaque_offsets=False)
  return [v.reshape(m.shape[:-2]) for v, m in zip(values, ms)]
