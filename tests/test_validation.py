"""Hyper-parameter validation (root_optax._src.validation) of every builder.

Every bad argument must fail when the transform is built, with an error naming
the argument, the value and what is allowed.
"""

import warnings

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import root_optax
from root_optax._src import coefficients

MUON = (3.4445, -4.7750, 2.0315)
LR = 0.01


# (builder, error type, regex naming argument and value).
def _root(**kw):
  return lambda: root_optax.root(LR, **kw)


_BAD_ARGUMENTS = {
    # root()
    "lr_str": (lambda: root_optax.root("fast"), TypeError, r"learning_rate .*real number.*'fast'"),
    "lr_negative": (lambda: root_optax.root(-1.0), ValueError, r"learning_rate must be >= 0.*-1\.0"),
    "lr_nan": (lambda: root_optax.root(float("nan")), ValueError, r"learning_rate must be finite.*nan"),
    "adam_lr": (_root(adam_learning_rate=-0.1), ValueError, r"adam_learning_rate must be >= 0.*-0\.1"),
    "beta_1": (_root(beta=1.0), ValueError, r"beta must be in \[0\.0, 1\.0\).*1\.0"),
    "beta_neg": (_root(beta=-0.5), ValueError, r"beta must be in \[0\.0, 1\.0\).*-0\.5"),
    "unknown_keyword": (_root(lerning_rate=0.1), TypeError, r"unexpected keyword argument 'lerning_rate'"),
    "nesterov": (_root(nesterov=1), TypeError, r"nesterov must be a bool.*1"),
    "quantile_0": (_root(quantile=0.0), ValueError, r"quantile must be in \(0\.0, 1\.0\].*0\.0"),
    "quantile_big": (_root(quantile=1.5), ValueError, r"quantile must be in \(0\.0, 1\.0\].*1\.5"),
    "quantile_str": (_root(quantile="0.9"), TypeError, r"quantile must be a real number.*'0\.9'"),
    "quantile_vec": (_root(quantile=np.array([0.5, 0.9])), ValueError, r"quantile must be a scalar.*\(2,\)"),
    "threshold": (_root(threshold=-1.0), ValueError, r"threshold must be >= 0.*-1\.0"),
    "threshold_method": (_root(threshold_method="sort"), ValueError,
                         r"threshold_method must be one of \('exact', 'fast'\).*'sort'"),
    "ns_method": (_root(ns_method="fastest"), ValueError,
                  r"ns_method must be one of \('auto', 'standard', 'gram'\).*'fastest'"),
    "gram_restarts": (lambda: root_optax.newton_schulz(jnp.ones((3, 9)), [(3.4445, -4.775, 2.0315)] * 5,
                                                       gram_restarts=(5,)),
                      ValueError, r"gram_restarts must be step indices in \[1, 4\]"),
    "rank_tolerance": (_root(threshold_rank_tolerance=1.0), ValueError,
                       r"threshold_rank_tolerance must be in \[0\.0, 1\.0\).*1\.0"),
    "ns_steps_0": (_root(ns_steps=0), ValueError, r"ns_steps must be an int >= 1.*0"),
    "ns_steps_float": (_root(ns_steps=2.0), TypeError, r"ns_steps must be an int >= 1.*2\.0"),
    "ns_steps_array": (_root(ns_steps=jnp.asarray(5)), TypeError, r"ns_steps must be a static.*static_args"),
    "preconditioning": (_root(preconditioning="l2"), ValueError,
                        r"preconditioning must be one of \('frobenius', 'schatten', 'schatten4', 'aol', 'spectral'\).*'l2'"),
    "auto_aol": (_root(ns_coeffs="auto", preconditioning="aol"), ValueError, r"'auto' can be fitted for normalization.*'aol'"),
    "eps": (_root(eps=-1e-7), ValueError, r"eps must be >= 0.*-1e-07"),
    "compute_dtype_int": (_root(compute_dtype=jnp.int32), TypeError, r"compute_dtype .*floating.*int32"),
    "compute_dtype_str": (_root(compute_dtype="float33"), TypeError, r"compute_dtype .*floating.*'float33'"),
    "mu_dtype": (_root(mu_dtype="float33"), TypeError, r"mu_dtype .*floating.*'float33'"),
    "consistent_rms": (_root(consistent_rms=0.0), ValueError, r"consistent_rms must be in \(0\.0, inf\].*0\.0"),
    "weight_decay": (_root(weight_decay=-0.1), ValueError, r"weight_decay must be >= 0.*-0\.1"),
    "adam_weight_decay": (_root(adam_weight_decay=-1.0), ValueError, r"adam_weight_decay must be >= 0.*-1\.0"),
    "weight_decay_mask": (_root(weight_decay_mask={"w": "yes"}), TypeError, r"weight_decay_mask .*bools.*'yes'"),
    "param_labels": (_root(param_labels={"w": "muon"}), ValueError,
                     r"param_labels leaves must be one of \('root', 'adam'\).*'muon'"),
    "dimension_numbers": (_root(muon_weight_dimension_numbers={"w": 3}), TypeError,
                          r"muon_weight_dimension_numbers .*type int"),
    "adam_b1": (_root(adam_b1=1.0), ValueError, r"adam_b1 must be in \[0\.0, 1\.0\).*1\.0"),
    "adam_b2": (_root(adam_b2=-0.1), ValueError, r"adam_b2 must be in \[0\.0, 1\.0\).*-0\.1"),
    "adam_eps": (_root(adam_eps=0.0), ValueError, r"adam_eps must be in \(0\.0, inf\].*0\.0"),
    "adaptive": (_root(adaptive=1), TypeError, r"adaptive must be a bool.*1"),
    "ano_adaptive": (lambda: root_optax.ada_newton_orthogonalize(adaptive="yes"), TypeError,
                     r"adaptive must be a bool.*'yes'"),
    # Coefficient tables.
    "coeff_shape": (_root(ns_coeffs=[[1.0, 2.0], [3.0, 4.0]]), ValueError,
                    r"ns_coeffs must have shape \(3,\) or \(T, 3\).*\(2, 2\)"),
    "coeff_inf": (_root(ns_coeffs=(1.0, 2.0, float("inf"))), ValueError, r"ns_coeffs must be finite.*inf"),
    "coeff_nan_entry": (_root(ns_coeffs={"4x8": (1.0, float("nan"), 2.0)}), ValueError,
                        r"coefficients\['custom'\]\[4x8\] must be finite.*nan"),
    "coeff_type": (_root(ns_coeffs=3), TypeError, r"ns_coeffs must be a preset name.*int"),
    "coeff_too_long": (_root(ns_coeffs=[MUON] * 6), ValueError, r"6 per-iteration triples but ns_steps=5"),
    "coeff_preset": (_root(ns_coeffs="no-such-preset"), ValueError, r"preset in \(.*'paper'.*'no-such-preset'"),
    "coeff_key": (_root(ns_coeffs={"16by32": MUON}), ValueError, r"key must look like '768x3072'.*'16by32'"),
    "coeff_key_zero": (_root(ns_coeffs={"0x4": MUON}), ValueError, r"two positive sizes.*\(0, 4\)"),
    "table_normalization": (lambda: root_optax.CoefficientTable("t", MUON, {}, normalization="l2"), ValueError,
                            r"normalization must be one of.*'l2'"),
    "table_default": (lambda: root_optax.CoefficientTable("t", (1.0, 2.0), {}), ValueError,
                      r"coefficients\['t'\]\['default'\] must have shape.*\(1, 2\)"),
    # The transforms and kernels, called directly.
    "sto_quantile": (lambda: root_optax.soft_threshold_outliers(quantile=2.0), ValueError, r"quantile .*2\.0"),
    "sto_offset": (lambda: root_optax.soft_threshold_outliers(offset=-1.0), ValueError, r"offset must be >= 0.*-1\.0"),
    "sto_method": (lambda: root_optax.soft_threshold_outliers(method="sort"), ValueError, r"method must be one of.*'sort'"),
    "sto_track": (lambda: root_optax.soft_threshold_outliers(track_outliers="yes"), TypeError,
                  r"track_outliers must be a bool.*'yes'"),
    "ada_max_gain": (lambda: root_optax.ada_newton_orthogonalize(max_gain=0.5), ValueError, r"max_gain must be >= 1.*0\.5"),
    "ada_precision": (lambda: root_optax.ada_newton_orthogonalize(precision="ultra"), ValueError,
                      r"precision must be a precision jnp.matmul accepts, got 'ultra'"),
    "ada_ns_steps": (lambda: root_optax.ada_newton_orthogonalize(ns_steps=-2), ValueError, r"ns_steps must be an int >= 1.*-2"),
    "shape_mode": (lambda: root_optax.scale_by_shape(mode="l2"), ValueError, r"mode must be one of.*'l2'"),
    "shape_rms": (lambda: root_optax.scale_by_shape(rms=-1.0), ValueError, r"rms must be in \(0\.0, inf\].*-1\.0"),
    "trace_decay": (lambda: root_optax.trace(decay=1.5), ValueError, r"decay must be in \[0\.0, 1\.0\).*1\.5"),
    "trace_dtype": (lambda: root_optax.trace(accumulator_dtype=jnp.int8), TypeError, r"accumulator_dtype .*int8"),
    "ns_rank": (lambda: root_optax.newton_schulz(jnp.ones(3), MUON), ValueError, r"\(\.\.\., m, n\).*\(3,\)"),
    "ns_eps": (lambda: root_optax.newton_schulz(jnp.ones((2, 2)), MUON, eps=-1.0), ValueError, r"eps must be >= 0.*-1\.0"),
    "ns_coeffs": (lambda: root_optax.newton_schulz(jnp.ones((2, 2)), (1.0, 2.0)), ValueError, r"shape \(3,\) or \(T, 3\)"),
    "ns_dtype": (lambda: root_optax.newton_schulz(jnp.ones((2, 2)), MUON, compute_dtype=jnp.int32), TypeError,
                 r"compute_dtype .*int32"),
    "exact_q": (lambda: root_optax.exact_abs_quantile(jnp.ones((2, 2)), 1.5), ValueError, r"quantile must be in \[0\.0, 1\.0\].*1\.5"),
    "exact_rank": (lambda: root_optax.exact_abs_quantile(jnp.ones(4), 0.5), ValueError, r"last two axes.*\(4,\)"),
    "fast_q": (lambda: root_optax.fast_abs_quantiles([jnp.ones((2, 2))], -0.1), ValueError, r"quantile .*-0\.1"),
    "soft_eps": (lambda: root_optax.soft_threshold(jnp.ones((2, 2)), -1.0), ValueError, r"eps must be >= 0.*-1\.0"),
    "split_eps": (lambda: root_optax.split_outliers(jnp.ones((2, 2)), np.array([0.1, np.nan])), ValueError,
                  r"eps must be >= 0.*nan"),
    "envelope_steps": (lambda: root_optax.polynomial_envelope(MUON, 0), ValueError, r"ns_steps must be an int >= 1.*0"),
    "envelope_points": (lambda: root_optax.polynomial_envelope(MUON, 5, num_points=1), ValueError, r"num_points must be >= 2.*1"),
    "envelope_min": (lambda: root_optax.polynomial_envelope(MUON, 5, min_input=2.0), ValueError, r"min_input .*2\.0"),
    "composed_steps": (lambda: root_optax.composed_polynomial(MUON, np.ones(2), -1), ValueError, r"ns_steps .*-1"),
    "unsafe_gain": (lambda: coefficients.unsafe_entries(root_optax.load_coefficients("muon"), 5, 0.9), ValueError,
                    r"max_gain must be >= 1.*0\.9"),
    "route_str": (lambda: root_optax.route_by_path("embed"), TypeError, r"adam must be a sequence of strings.*'embed'"),
    "route_items": (lambda: root_optax.route_by_path(["embed", 3]), TypeError, r"adam must be a sequence of strings"),
}


@pytest.mark.parametrize("case", sorted(_BAD_ARGUMENTS))
def test_bad_argument_fails_at_build_time_naming_it(case):
  build, error, pattern = _BAD_ARGUMENTS[case]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(error, match=pattern):
      build()


def test_good_arguments_build_without_warnings():
  # The counterpart of the table above: the checks must not reject valid input.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    root_optax.root(optax.constant_schedule(0.1), beta=0.0, quantile=1.0, threshold=0.0,
                    compute_dtype=jnp.bfloat16, mu_dtype="float32", consistent_rms=None,
                    weight_decay_mask={"w": True, "b": np.bool_(False)}, param_labels={"w": "root", "b": "adam"},
                    adam_learning_rate=jnp.asarray(0.0), ns_coeffs=[MUON, (1.875, -1.25, 0.375)])
    root_optax.ada_newton_orthogonalize(precision="highest")
    root_optax.route_by_path(["embed"])
    root_optax.CoefficientTable("t", MUON, {(8, 4): [MUON]})
