"""Import directions between our packages, read from the source (ast), lazy imports inside functions too.

Layers, each importing only from the layers below it (so there is no cycle):

    grpo.cli      the `grpo` entry point: maps command names to recipes (the one grpo module above them)
    recipes/      the runnable loops: grpo, rollouts, rewards
    grpo/         the algorithm and the training side (everything but grpo.cli): rollouts, rewards
    rollouts/     generation engines: nothing of ours but grpo.errors (the caller hands over a model
                  folder, a tokenizer, a model); they never load the trainer's models or config
    rewards/      reward functions and their health: nothing of ours but grpo.errors
    grpo.errors   the user-fixable error types every layer raises: imports nothing of ours

rollouts/ and rewards/ are side by side: neither imports the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("grpo", "rewards", "rollouts", "recipes")
ALLOWED = {  # layer -> the layers it may import (itself always)
    "grpo.cli": {"recipes", "grpo", "rollouts", "rewards", "grpo.errors"},
    "recipes": {"grpo", "rollouts", "rewards", "grpo.errors"},
    "grpo": {"rollouts", "rewards", "grpo.errors"},
    "rollouts": {"grpo.errors"},
    "rewards": {"grpo.errors"},
    "grpo.errors": set(),
}


def layer_of(module: str) -> str | None:
    if module in ("grpo.cli", "grpo.__main__"):  # `grpo` and `python -m grpo`
        return "grpo.cli"
    if module == "grpo.errors":
        return "grpo.errors"
    top = module.split(".")[0]
    return top if top in OURS else None


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file, at any depth (a lazy import counts)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            # `from grpo import errors` imports the module grpo.errors
            found += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" == "grpo.errors" else base)
                      for a in node.names]
    return sorted(found)


def our_modules() -> list[Path]:
    return sorted(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py"))


def test_the_layers_have_no_cycle():
    order = []  # a topological order of ALLOWED exists iff the layer graph is acyclic
    left = dict(ALLOWED)
    while left:
        ready = [layer for layer, deps in left.items() if deps <= set(order)]
        assert ready, f"cycle among {sorted(left)}"
        order += ready
        for layer in ready:
            del left[layer]


@pytest.mark.parametrize("path", our_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path: Path):
    here = layer_of(module_name(path))
    wrong = [f"line {line}: {mod} ({layer_of(mod)})" for line, mod in imports_of(path)
             if layer_of(mod) not in (None, here) and layer_of(mod) not in ALLOWED[here]]
    assert not wrong, f"{path.relative_to(ROOT)} ({here}) may import only {sorted(ALLOWED[here])}: {wrong}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    src = tmp_path / "rollouts" / "x.py"
    src.parent.mkdir()
    src.write_text("from . import types\n\n\ndef f():\n    from grpo.models.loader import load_tokenizer\n")
    assert imports_of(src, tmp_path) == [(1, "rollouts"), (5, "grpo.models.loader")]
    assert layer_of("grpo.models.loader") not in ALLOWED["rollouts"]
