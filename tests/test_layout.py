"""The package's tree is its architecture: stages on top of shared rooms, no import upward or
in a circle (read from the source with `ast`, function-level imports included)."""
import ast
import importlib

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "vqgan_jax"
# What each room may import (besides itself). The modules directly in the package (`main`,
# `benchmark`, `restore_memory`, `__init__`) sit above everything and may import any room.
ALLOWED = {
    "models": set(),
    "data": set(),
    "runtime": {"data"},
    "metrics": {"models", "data", "runtime"},
    "tokenizer": {"models", "data", "runtime", "metrics"},
    "prior": {"tokenizer", "models", "data", "runtime", "metrics"},
    "codec": {"prior", "tokenizer", "models", "data", "runtime", "metrics"},
}
TOP = {p.stem for p in PACKAGE.glob("*.py")}


def _module_name(path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
  return {_module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(tree: ast.Module, module: str, *, top_level_only: bool) -> set[str]:
  """The vqgan_jax modules `module` imports (a `from pkg import name` counts pkg.name when
  that is a module, else pkg)."""
  names = set()
  nodes = tree.body if top_level_only else ast.walk(tree)
  for node in nodes:
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names if a.name.startswith("vqgan_jax"))
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vqgan_jax"):
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        is_module = (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
            PACKAGE.parent / candidate.replace(".", "/") / "__init__.py").exists()
        names.add(candidate if is_module else node.module)
  names.discard(module)
  return names


def _room(module: str) -> str:
  parts = module.split(".")
  return "__init__" if len(parts) == 1 else parts[1]


def test_every_room_imports_only_the_rooms_below_it():
  violations = []
  for module, tree in _modules().items():
    room = _room(module)
    if room in TOP:
      continue
    assert room in ALLOWED, f"{module} is in an unknown room {room!r}: add it to ALLOWED"
    for imported in _imports(tree, module, top_level_only=False):
      target = _room(imported)
      if target != room and target not in ALLOWED[room]:
        violations.append(f"{module} imports {imported}")
  assert not violations, "upward imports:\n" + "\n".join(violations)


def test_no_circular_imports_at_module_level():
  graph = {m: _imports(t, m, top_level_only=True) for m, t in _modules().items()}
  visiting, done = [], set()

  def visit(module):
    if module in done:
      return
    if module in visiting:
      cycle = visiting[visiting.index(module):] + [module]
      pytest.fail("circular import: " + " -> ".join(cycle))
    visiting.append(module)
    for imported in graph.get(module, ()):
      visit(imported)
    visiting.pop()
    done.add(module)

  for module in graph:
    visit(module)


def test_every_module_imports():
  for module in _modules():
    importlib.import_module(module)


def test_models_name_the_runtimes_batch_axis():
  from vqgan_jax.models import codebook_ops  # pylint: disable=g-import-not-at-top
  from vqgan_jax.runtime import sharding  # pylint: disable=g-import-not-at-top
  assert codebook_ops.DATA_AXIS == sharding.DATA_AXIS
