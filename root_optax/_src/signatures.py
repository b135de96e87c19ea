"""Readable signatures: `help()` and Sphinx show type aliases by their names.

Python 3.11 has no named type aliases (``type X = ...`` is 3.12), so
`inspect.signature` prints an alias such as ``optax.ScalarOrSchedule`` as the
``Union`` it stands for: ``help(root_optax.root)`` opened with ~2,000
characters of them. `show_alias_names` gives a function a ``__signature__``
(what `inspect.signature`, hence `help` and Sphinx, reads) in which each such
annotation is an object that prints as the alias's name. ``__annotations__``
keep the real types, for type checkers and `typing.get_type_hints`.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional, Union

import optax


class _Named:
  """An annotation shown as ``name`` (`inspect` prints an annotation's repr)."""

  __slots__ = ("name", "annotation")

  def __init__(self, name: str, annotation: Any):
    self.name = name
    self.annotation = annotation

  def __repr__(self) -> str:
    return self.name


def _names(aliases: Mapping[str, Any]) -> dict[Any, str]:
  """``{annotation: shown name}``: each alias, and ``Optional`` of it unless it holds None."""
  names = {value: name for name, value in aliases.items()}
  for name, value in aliases.items():
    names.setdefault(Optional[value], f"Optional[{name}]")
  return names


def _shown(annotation: Any, names: Mapping[Any, str]) -> Any:
  try:
    name = names.get(annotation)
  except TypeError:  # an unhashable annotation is no alias
    return annotation
  return annotation if name is None else _Named(name, annotation)


def readable_signature(fn: Callable[..., Any], aliases: Mapping[str, Any]) -> inspect.Signature:
  """``fn``'s signature with every annotation found in ``aliases`` shown by its name.

  Args:
    fn: A function.
    aliases: ``{name to show: annotation}``; ``Optional[annotation]`` is shown
      as ``Optional[name]``.

  Returns:
    The signature, for ``fn.__signature__``.
  """
  names = _names(aliases)
  signature = inspect.signature(fn)
  parameters = [p.replace(annotation=_shown(p.annotation, names))
                for p in signature.parameters.values()]
  return signature.replace(parameters=parameters,
                           return_annotation=_shown(signature.return_annotation, names))


# Modules whose public ``Union`` aliases appear in public signatures.
_ALIAS_MODULES = ("alias", "calibration_cache", "coefficients", "dimensions", "labels", "sharding")


def public_aliases() -> dict[str, Any]:
  """The type aliases of root_optax's public signatures, by name: optax's, and
  every public module-level ``Union`` of `_ALIAS_MODULES`."""
  aliases = {
      "optax.ScalarOrSchedule": optax.ScalarOrSchedule,
      "optax.GradientTransformation": optax.GradientTransformation,
      "optax.GradientTransformationExtraArgs": optax.GradientTransformationExtraArgs,
  }
  for module_name in _ALIAS_MODULES:
    module = importlib.import_module(f"root_optax._src.{module_name}")
    for name, value in vars(module).items():
      if not name.startswith("_") and typing.get_origin(value) is Union:
        aliases.setdefault(name, value)
  return aliases


def show_alias_names(functions: Iterable[Any]) -> None:
  """Sets ``__signature__`` of each plain function in ``functions`` (see the module)."""
  aliases = public_aliases()
  for fn in functions:
    if inspect.isfunction(fn):
      fn.__signature__ = readable_signature(fn, aliases)
