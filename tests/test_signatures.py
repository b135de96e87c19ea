"""Tests for root_optax._src.signatures: public signatures shown with type aliases' names."""

import inspect

import optax

import root_optax


def test_public_signatures_have_real_annotations_shown_by_alias_name():
  for name in root_optax.__all__:
    obj = getattr(root_optax, name)
    if not inspect.isfunction(obj):
      continue
    strings = [p for p, v in obj.__annotations__.items() if isinstance(v, str)]
    assert not strings, f"{name} has string annotations on {strings}"
  assert root_optax.root.__annotations__["learning_rate"] is optax.ScalarOrSchedule
  # What help() and the API docs print: the aliases' names, not their Unions.
  shown = str(inspect.signature(root_optax.root))
  assert shown.startswith("(learning_rate: optax.ScalarOrSchedule, "
                          "ns_coeffs: Optional[CoefficientSpec] = None, "), shown[:200]
  for text in ("sharding: ShardingSpec = None", "-> optax.GradientTransformation",
               "calibration_cache_dir: CacheDir = None", "param_labels: LabelsOrFn = None"):
    assert text in shown, text
  assert "Union" not in shown and "jaxlib" not in shown and len(shown) < 1500, shown
