"""House rules that a review would otherwise have to catch by eye: ruff (pyflakes, pycodestyle,
import order; configured in pyproject.toml) is clean, and files and functions stay small enough to
read in one sitting (files <= 500 lines, functions <= 80)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
PACKAGES = ("grpo", "rewards", "rollouts", "recipes", "bench", "tests")
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80


def _python_files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def oversized(path: Path) -> list[str]:
    """What in one file breaks the size rules, as 'file: what (n lines)' strings."""
    src = path.read_text()
    name = path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)
    out, n_lines = [], src.count("\n")
    if n_lines > MAX_FILE_LINES:
        out.append(f"{name}: {n_lines} lines")
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{name}:{node.lineno} {node.name}() {n} lines")
    return out


def test_the_size_check_catches_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    f = tmp_path / "long.py"
    f.write_text(f"def long():\n{body}\n\n\ndef short():\n    return 1\n")
    assert [s.split()[-3] for s in oversized(f)] == ["long()"]


def test_files_and_functions_are_small():
    found = [s for p in _python_files() for s in oversized(p)]
    assert not found, "split these (files <= 500 lines, functions <= 80):\n" + "\n".join(found)


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("ruff is not installed: it is in the test extra (pip install -e '.[cpu,test]')")
    return [exe]


def test_ruff_is_clean():
    res = subprocess.run([*_ruff(), "check", "--no-cache", *PACKAGES], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, "ruff check found problems (fix them, or `ruff check --fix`):\n" + res.stdout[-4000:]


def test_ruff_catches_an_unused_import(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text("import os\n")
    res = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(f)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "F401" in res.stdout
