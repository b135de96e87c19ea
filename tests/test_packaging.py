"""Packaging: the installed distribution requires only jax, optax and numpy, ships
`py.typed` and its data files, and `root_optax/` imports nothing else at module level.

`.ci/run` runs this against the built wheel installed in a fresh venv (and against the
declared minimum versions); with an editable install the checks on the sources and the
metadata still apply.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import pathlib
import re
import sys
import tomllib

import pytest

DIST = "root-optax"
# Found without importing it, so that a bad import is reported by the test below.
PACKAGE_DIR = pathlib.Path(importlib.util.find_spec("root_optax").origin).resolve().parent
# What the package needs at run time: its required dependencies, by import name (which
# for these three is also the distribution name).
CORE = {"jax", "optax", "numpy"}
TOP_LEVEL_ALLOWED = CORE | {"root_optax"}
# Imported inside functions only, for optional features: YAML coefficient tables (the
# `yaml` extra) and the CLI's progress bar (falls back to plain lines without tqdm).
LAZY_ALLOWED = TOP_LEVEL_ALLOWED | {"yaml", "tqdm"}


def _normalize(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _split(requirement: str) -> tuple[str, str, str]:
  """'name[x]>=1; marker' -> (normalized name, version spec, marker)."""
  spec, _, marker = requirement.partition(";")
  m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", spec)
  assert m, f"cannot parse requirement {requirement!r}"
  return _normalize(m.group(1)), m.group(3).strip(), marker.strip()


def _required(requirements: list[str] | None) -> dict[str, str]:
  """Name -> version spec of the requirements that no extra gates."""
  out = {}
  for r in requirements or []:
    name, version, marker = _split(r)
    if not re.search(r"\bextra\s*==", marker):
      out[name] = version
  return out


def _extra(requirements: list[str] | None, extra: str) -> set[str]:
  out = set()
  for r in requirements or []:
    name, _, marker = _split(r)
    if re.search(r"\bextra\s*==\s*['\"]" + re.escape(extra) + r"['\"]", marker):
      out.add(name)
  return out


def _imports(path: pathlib.Path) -> list[tuple[str, bool, int]]:
  """(top-level module, inside a function?, line) for every absolute import in a file."""
  found = []

  def visit(node: ast.AST, in_function: bool):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        found.extend((a.name.split(".")[0], in_function, child.lineno) for a in child.names)
      elif isinstance(child, ast.ImportFrom):
        if child.level == 0 and child.module:
          found.append((child.module.split(".")[0], in_function, child.lineno))
      visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  visit(ast.parse(path.read_text(), filename=str(path)), False)
  return found


def _foreign_imports(package_dir: pathlib.Path) -> list[str]:
  """Imports from outside the stdlib and the allowed sets, as 'file:line module'."""
  stdlib = set(sys.stdlib_module_names)
  bad = []
  for path in sorted(package_dir.rglob("*.py")):
    for module, lazy, line in _imports(path):
      allowed = LAZY_ALLOWED if lazy else TOP_LEVEL_ALLOWED
      if module not in stdlib and module not in allowed:
        kind = "lazy" if lazy else "module-level"
        bad.append(f"{path.relative_to(package_dir.parent)}:{line} {kind} import {module}")
  return bad


def test_required_dependencies_are_exactly_jax_optax_numpy():
  required = _required(importlib.metadata.requires(DIST))
  assert set(required) == CORE, f"required dependencies of {DIST}: {sorted(required)}"
  for name, version in required.items():
    assert ">=" in version, f"{name} needs a tested lower bound, got {version!r}"


def test_yaml_extra_provides_yaml():
  assert "pyyaml" in _extra(importlib.metadata.requires(DIST), "yaml")


def test_py_typed_and_data_files_are_shipped():
  assert (PACKAGE_DIR / "py.typed").is_file(), f"no py.typed in {PACKAGE_DIR}"
  assert (PACKAGE_DIR / "data" / "coefficients.json").is_file()
  recorded = {str(f).replace("\\", "/") for f in importlib.metadata.files(DIST) or ()}
  if "root_optax/__init__.py" not in recorded:
    pytest.skip("editable install: the distribution records no package files")
  assert "root_optax/py.typed" in recorded
  assert "root_optax/data/coefficients.json" in recorded
  assert any(re.fullmatch(r"root_optax/data/preset_\w+\.json", f) for f in recorded), sorted(recorded)


def test_package_imports_only_stdlib_jax_optax_numpy():
  assert list(PACKAGE_DIR.glob("*.py")), f"no sources found in {PACKAGE_DIR}"
  assert _foreign_imports(PACKAGE_DIR) == []


def test_checks_catch_violations(tmp_path):
  """The helpers above flag what they are meant to flag."""
  package = tmp_path / "fake_pkg"
  package.mkdir()
  (package / "ok.py").write_text(
      "import os\nimport jax.numpy as jnp\nfrom . import x\n"
      "def f():\n  import yaml\n  import tqdm\n")
  (package / "bad.py").write_text(
      "import flax.linen\ntry:\n  import chex\nexcept ImportError:\n  pass\n"
      "class C:\n  import orbax\n"
      "def g():\n  import matplotlib\n")
  assert _foreign_imports(package) == [
      "fake_pkg/bad.py:1 module-level import flax",
      "fake_pkg/bad.py:3 module-level import chex",
      "fake_pkg/bad.py:7 module-level import orbax",
      "fake_pkg/bad.py:9 lazy import matplotlib",
  ]
  reqs = ["jax>=0.5", "Optax >=0.2", "numpy>=1.26", "flax>=0.11",
          'PyYAML>=6; extra == "yaml"', "chex; python_version >= '3.10'"]
  assert set(_required(reqs)) == CORE | {"flax", "chex"}
  assert _extra(reqs, "yaml") == {"pyyaml"}


def test_only_root_optax_is_shipped():
  """The distribution holds the package alone: examples/, configs/ and tests/ stay
  in the repository (they import flax, orbax, ... which the package does not need)."""
  pyproject = pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml"
  find = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["packages"]["find"]
  assert find["include"] == ["root_optax*"], find
  dist = importlib.metadata.distribution(DIST)
  if dist.read_text("WHEEL") is None:  # e.g. a root_optax.egg-info left in the checkout
    pytest.skip(f"{DIST} metadata found here is not an installed wheel's")
  recorded = {str(f).replace("\\", "/") for f in dist.files or ()}
  if "root_optax/__init__.py" not in recorded:
    pytest.skip("editable install: the distribution records no package files")
  top = {f.split("/")[0] for f in recorded if "/" in f and not f.startswith("..")}
  assert {t for t in top if not t.endswith(".dist-info")} == {"root_optax"}, sorted(top)
