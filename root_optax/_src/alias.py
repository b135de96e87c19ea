"""`root()`: the ROOT optimizer, chained from the package's transforms."""

from typing import Any, Callable, Optional, Union

import optax

from root_optax._src import bursts as bursts_lib
from root_optax._src import calibration_cache
from root_optax._src import coefficients as coefficients_lib
from root_optax._src import dimensions
from root_optax._src import gate as gate_lib
from root_optax._src import labels as labels_lib
from root_optax._src import momentum as momentum_lib
from root_optax._src import normalization
from root_optax._src import orthogonalize
from root_optax._src import outliers
from root_optax._src import quantiles
from root_optax._src import routing
from root_optax._src import scaling as scaling_lib
from root_optax._src import sharding as sharding_lib
from root_optax._src import validation
from root_optax._src import variants

MaskOrFn = Union[Any, Callable[[optax.Params], Any], None]
Builder = Callable[..., optax.GradientTransformation]


def _with_auto_axes(build: Builder) -> Builder:
  """``build`` whose transform runs with Auto mesh axes (`sharding.with_auto_axes`)."""
  return lambda **kwargs: sharding_lib.with_auto_axes(build(**kwargs))


# root()'s stages, whose errors name root()'s arguments, not the inner ones.
_gate_outliers = _with_auto_axes(validation.renamed(
    gate_lib.gate_outliers, threshold="outlier_gate", decay="outlier_gate_decay"))
_clip_bursts = validation.renamed(
    bursts_lib.clip_bursts, factor="burst_factor", decay="burst_decay")
_trace = validation.renamed(momentum_lib.trace, decay="beta", accumulator_dtype="mu_dtype")
_clip_momentum = _with_auto_axes(validation.renamed(
    outliers.soft_threshold_outliers, method="threshold_method",
    rank_tolerance="threshold_rank_tolerance"))
_orthogonalize = validation.renamed(
    orthogonalize.ada_newton_orthogonalize, coefficients="ns_coeffs",
    cache_dir="calibration_cache_dir", method="ns_method")
_scale_to_average = validation.renamed(momentum_lib.scale_to_average, decay="beta")
_scale_by_shape = validation.renamed(scaling_lib.scale_by_shape, rms="consistent_rms")


def _when(on: bool, build: Builder, **kwargs) -> tuple[optax.GradientTransformation, ...]:
  """``(build(**kwargs),)`` if ``on``, else ``()``: a stage left out is not built (nor checked)."""
  return (build(**kwargs),) if on else ()


def root(
    learning_rate: optax.ScalarOrSchedule,
    ns_coeffs: Optional[coefficients_lib.CoefficientSpec] = None,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-7,
    weight_decay: float = 0.1,
    weight_decay_mask: MaskOrFn = None,
    mu_dtype: Optional[Any] = None,
    *,
    nesterov: bool = True,
    adaptive: bool = False,
    preconditioning: Optional[str] = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.95,
    adam_eps_root: float = 0.0,
    adam_weight_decay: Optional[float] = None,
    adam_learning_rate: Optional[optax.ScalarOrSchedule] = None,
    muon_weight_dimension_numbers: dimensions.WeightDimNumOrFn = None,
    consistent_rms: Optional[float] = 0.2,
    variant: str = variants.ROBUST,
    outlier_gate: Optional[float] = None,
    outlier_gate_decay: float = 0.95,
    burst_factor: Optional[float] = None,
    burst_decay: float = 0.95,
    quantile: Optional[float] = None,
    threshold: Optional[float] = None,
    threshold_method: str = quantiles.FAST,
    threshold_rank_tolerance: float = 0.0,
    calibration_cache_dir: calibration_cache.CacheDir = None,
    compute_dtype: Optional[Any] = None,
    ns_method: str = "auto",
    adam_eps: float = 1e-8,
    adam_nesterov: bool = False,
    param_labels: labels_lib.LabelsOrFn = None,
    sharding: sharding_lib.ShardingSpec = None,
) -> optax.GradientTransformation:
  r"""ROOT: Robust Orthogonalized Optimizer (He et al., 2025).

  For each matrix parameter ``W`` with gradient ``G`` (paper Algorithm 1, with
  the reference script's Nesterov momentum and scaling)::

    G   = clip(G, -k s v, k s v)            (outlier gate; s = mean|G|, v = the
                                         entry's factored running |G| / s)
    G   = G r / ||G||  if ||G|| > f r       (burst guard; r = EMA of ||G||)
    M   = beta M + G;   N = G + beta M      (trace)
    B   = clip(N, -eps_q, eps_q)            (the paper's clip, eps_q = q_p(|N|))
    U   = NS_shape(B / ||B||)               (ada_newton_orthogonalize)
    W  <- W (1 - lr wd) - lr 0.2 sqrt(max(m, n)) U   (scale_by_shape, decay)

  The arguments shared with `optax.contrib.muon` have its names and meaning,
  so a Muon call runs unchanged with ``root``; the defaults that differ are
  ROOT's (the reference script's): ``eps=1e-7``, ``weight_decay=0.1``,
  ``adam_b2=0.95`` and ``consistent_rms=0.2``.

  ``variant`` picks the defaults of the robustness stages:

  * ``'robust'`` (default): the gate (``k = 10``, `gate_outliers`) and the
    burst guard (``f = 4``, `clip_bursts`) act on the gradient before it
    enters the momentum, and only on entries and steps that are abnormal for
    that matrix's own recent history: a row or column that is large at every
    step is signal and passes. The paper's momentum clip is off
    (``quantile=1.0``): it clips 10% of every momentum at every step and
    cannot remove a burst already in the momentum.
    Coefficients ``'muon'``: Muon's triple for every shape. AdaNewton's
    per-shape coefficients are ``ns_coeffs='auto'``: they orthogonalise 10x
    more precisely, but trained worse on the LM example (``docs/robustness.md``).
  * ``'paper'``: exactly the paper's step: no gate or burst guard, the
    momentum clipped at its 90% magnitude quantile, Table 1 coefficients.

  Arguments left at None take the variant's value; ``outlier_gate`` and
  ``burst_factor`` of ``math.inf``, or ``quantile=1.0``, turn that stage off.
  The weight decay is decoupled and multiplied by the unscaled learning rate,
  as in the reference (``w *= 1 - lr * wd``), and by default applies to every
  parameter, in both branches: biases and norm scales too (on the LM example
  sparing them trains worse, see ``docs/migration.md``; pass a
  ``weight_decay_mask`` to spare them). Leaves labelled ``'adam'`` are trained
  with AdamW: by default (`default_labels`) every leaf that is not a weight
  matrix (not 2-D, a dimension of 1, a stacked ``bias`` or ``scale``, an
  ``embed`` path, or not real floating-point); use `route_by_path` to also
  send the LM head, as the reference does, and `describe` to see the routing.

  Example:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import root_optax
    >>> params = {'w': jnp.ones((4, 8)), 'b': jnp.zeros(8)}
    >>> tx = root_optax.root(learning_rate=1e-2)
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.full((4, 8), 0.5), 'b': jnp.ones(8)}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> params['w'].shape
    (4, 8)

  Args:
    learning_rate: A float or an optax schedule.
    ns_coeffs: Newton-Schulz coefficients: a preset name (``'auto'``,
      ``'ada'``, ``'paper'``, ``'reference'``, ``'muon'``, ``'classic'``, or
      optax's ``'standard'`` and ``'dion'``), one triple, per-iteration
      triples, a dict, a JSON/YAML path or a `CoefficientTable`; None: the
      variant's (``'muon'`` or ``'paper'``). ``'auto'`` is AdaNewton for every
      shape: shipped or fitted per-shape, per-iteration coefficients. See
      `ada_newton_orthogonalize`.
    ns_steps: Newton-Schulz iterations, >= 1.
    beta: Momentum decay ``beta`` in [0, 1).
    eps: Added to the Frobenius norm before Newton-Schulz.
    weight_decay: Decoupled weight decay, >= 0.
    weight_decay_mask: A bool tree like the params, or a callable returning
      one; True where weight decay applies (both branches). None: every
      parameter.
    mu_dtype: dtype of the momentum buffers (ROOT and AdamW).
    nesterov: Use the Nesterov look-ahead ``G + beta M``.
    adaptive: Scale each orthogonalised update ``U`` by ``<B, U>``, the dual
      norm of the matrix it came from (Bernstein et al., 2024), as optax Muon,
      with the momentum taken as an average as Muon keeps it (ROOT keeps a sum,
      ~``1 / (1 - beta)`` times larger; see `scale_to_average`).
    preconditioning: How each matrix is rescaled before Newton-Schulz:
      ``'frobenius'`` (the reference), ``'schatten'`` (Schatten-4 norm,
      ``'schatten4'`` also accepted), ``'aol'`` (AOL row sums) or
      ``'spectral'`` (largest singular value, from the Gram matrix's
      eigenvalues); None: what the coefficient table was fitted for
      (``'frobenius'`` for ``'muon'`` and ``'paper'``, ``'schatten'`` for
      ``'auto'``). ``'auto'`` fits its coefficients for ``'frobenius'`` or
      ``'schatten'``.
    adam_b1: AdamW's first-moment decay.
    adam_b2: AdamW's second-moment decay.
    adam_eps_root: AdamW's epsilon inside the square root.
    adam_weight_decay: AdamW's weight decay (default: ``weight_decay``).
    adam_learning_rate: AdamW's learning rate (default: ``learning_rate``).
    muon_weight_dimension_numbers: `optax.contrib.MuonDimensionNumbers` per
      leaf (None for AdamW leaves) in a tree like the params or a prefix of
      it, one for all leaves of rank >= 2, or a callable returning either
      (called once); lets stacked (scanned) layers, attention and conv
      kernels be ROOT leaves (recipes: ``docs/migration.md``).
    consistent_rms: Scale each update by ``consistent_rms * sqrt(max(m, n))``
      so its RMS matches AdamW's (Liu et al., 2025); None: optax Muon's
      default width scaling ``sqrt(max(1, fan_out / fan_in))``.
    variant: ``'robust'`` or ``'paper'`` (see above).
    outlier_gate: ``k`` > 0: entries of each gradient matrix beyond ``k``
      times their expected magnitude, from the EMAs of that matrix's row and
      column magnitudes, are clipped to it (`gate_outliers`); ``math.inf``: off.
    outlier_gate_decay: Decay of those EMAs, in [0, 1).
    burst_factor: ``f`` > 1: a matrix gradient whose norm exceeds ``f`` times
      the EMA of its past norms is rescaled to that EMA (`clip_bursts`);
      ``math.inf``: off.
    burst_decay: Decay of that EMA, in [0, 1).
    quantile: ``p`` in (0, 1] of the paper's momentum clip; 1.0: off.
    threshold: A fixed momentum threshold instead of the quantile.
    threshold_method: ``'fast'`` (counting search, sorts only a small sample)
      or ``'exact'`` (full sort), for the paper's momentum clip.
    threshold_rank_tolerance: For ``'fast'``, the largest share of a matrix's
      entries, in [0, 1), between the threshold and the exact quantile;
      default 0 (exact order statistics), see `soft_threshold_outliers`.
    calibration_cache_dir: Where ``'auto'`` caches coefficients it fits;
      see `ada_newton_orthogonalize`'s ``cache_dir``.
    compute_dtype: dtype of the Newton-Schulz iteration (e.g. ``jnp.bfloat16``).
    ns_method: ``'auto'`` (Gram Newton-Schulz for matrices with
      ``max(m, n) > 1.5 min(m, n)`` in float32, the standard form in bf16),
      ``'standard'`` or ``'gram'`` (restarted once in bf16); see
      `ada_newton_orthogonalize`.
    adam_eps: AdamW's epsilon.
    adam_nesterov: NAdamW instead of AdamW for the ``'adam'`` leaves (optax
      Muon's ``nesterov=True`` does both; ROOT's reference uses AdamW).
    param_labels: A tree of ``'root'`` / ``'adam'`` like the params (or a
      prefix of it), or a callable returning one.
    sharding: Multi-device Newton-Schulz: None (XLA's default partitioning),
      ``'auto'`` or a `jax.sharding.Mesh` (each shape group split along its
      stack axis over the mesh, whole matrices per device); see
      `ada_newton_orthogonalize`.

  Returns:
    An `optax.GradientTransformation`: `optax.partition` of the ROOT chain and
    AdamW.

  Raises:
    ValueError, TypeError: When built, for an argument outside its allowed
      range or of the wrong type; the message names the argument, the value
      and what is allowed. At ``init``, TypeError for a complex or integer
      leaf labelled ``'root'`` by ``param_labels`` (without ``param_labels``
      such leaves go to AdamW, named in one INFO log line).

  References:
    He et al., `ROOT: Robust Orthogonalized Optimizer for Neural Network
    Training <https://arxiv.org/abs/2511.20626>`_, 2025.

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.

    Bernstein et al., `Old Optimizer, New Norm: An Anthology
    <https://arxiv.org/abs/2409.20325>`_, 2024.
  """
  settings = variants.settings(
      variant=variant, ns_coeffs=ns_coeffs, outlier_gate=outlier_gate, burst_factor=burst_factor,
      quantile=quantile, threshold=threshold, consistent_rms=consistent_rms,
      learning_rate=learning_rate, adam_learning_rate=adam_learning_rate,
      weight_decay=weight_decay, adam_weight_decay=adam_weight_decay, adam_eps_root=adam_eps_root,
      adam_b1=adam_b1, adam_b2=adam_b2, adam_eps=adam_eps, adam_nesterov=adam_nesterov,
      threshold_method=threshold_method, threshold_rank_tolerance=threshold_rank_tolerance,
      weight_decay_mask=weight_decay_mask, param_labels=param_labels,
      muon_weight_dimension_numbers=muon_weight_dimension_numbers)
  dims = settings.root_dimension_numbers
  root_chain = optax.chain(
      # The gate, with the burst guard in its pass over the stacks; or the guard alone.
      *_when(settings.gate_on, _gate_outliers,
             threshold=settings.outlier_gate, decay=outlier_gate_decay,
             weight_dimension_numbers=dims, burst_factor=settings.gate_burst_factor,
             burst_decay=burst_decay),
      *_when(settings.bursts_alone, _clip_bursts,
             factor=settings.burst_factor, decay=burst_decay, weight_dimension_numbers=dims),
      _trace(decay=beta, nesterov=nesterov, accumulator_dtype=mu_dtype),
      *_when(settings.momentum_clip_on, _clip_momentum,
             quantile=settings.quantile, threshold=threshold, method=threshold_method,
             multiplier=1.0, rank_tolerance=threshold_rank_tolerance,
             weight_dimension_numbers=dims, track_outliers=True, name="momentum_outliers",
             opaque_offsets=False),
      _orthogonalize(
          coefficients=settings.ns_coeffs, ns_steps=ns_steps,
          normalization=normalization.normalization_for(preconditioning), eps=eps,
          compute_dtype=compute_dtype, weight_dimension_numbers=dims, sharding=sharding,
          cache_dir=calibration_cache_dir, adaptive=adaptive, method=ns_method),
      # <B, U> of the sum-form momentum is ~1 / (1 - beta) times optax Muon's (an average).
      *_when(adaptive, _scale_to_average, decay=beta, nesterov=nesterov),
      _scale_by_shape(mode=settings.scale_mode, rms=settings.scale_rms,
                      weight_dimension_numbers=dims),
      optax.add_decayed_weights(weight_decay=weight_decay, mask=settings.decay_mask),
      optax.scale_by_learning_rate(learning_rate=learning_rate),
  )
  adam = optax.adamw(
      learning_rate=settings.adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=adam_eps,
      eps_root=adam_eps_root, weight_decay=settings.adam_weight_decay,
      mask=settings.decay_mask, mu_dtype=mu_dtype, nesterov=adam_nesterov)
  return routing.logs_routes_at_init(
      optax.partition(
          transforms={labels_lib.ROOT: root_chain, labels_lib.ADAM: adam},
          param_labels=labels_lib.labels_fn(param_labels, muon_weight_dimension_numbers)),
      param_labels=param_labels, muon_weight_dimension_numbers=muon_weight_dimension_numbers)
