"""Docs cite only files a user has: every repository path named in the docs exists, and none
points at notes outside the repository (ENVIRONMENT.md lived beside it, not in it)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).parents[2]
DOCS = ["README.md", "SECURITY.md", "pyproject.toml", "Makefile", *sorted(p.relative_to(REPO).as_posix() for p in
        [*REPO.glob("docs/*.md"), *REPO.glob("*/README.md")])]
TOP = ("grpo", "rewards", "rollouts", "recipes", "tests", "bench", "docs", ".ci")
OUTPUTS = ("bench/logs", "bench/out", "runs")  # folders that runs write (not committed)
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*[\w])" % "|".join(re.escape(t) for t in TOP))


def cited_paths(text: str) -> set[str]:
    return {m.rstrip(".") for m in PATH.findall(text) if "*" not in m and "<" not in m}


def test_no_doc_cites_a_file_outside_the_repository():
    for name in DOCS:
        assert "ENVIRONMENT.md" not in (REPO / name).read_text(), f"{name} cites ENVIRONMENT.md (not in the repo)"


def test_every_cited_repository_path_exists():
    missing = {}
    for name in DOCS:
        text = (REPO / name).read_text()
        gone = sorted(p for p in cited_paths(text) if not p.startswith(OUTPUTS)
                      and not (REPO / p).exists() and not (REPO / name).parent.joinpath(p).exists())
        if gone:
            missing[name] = gone
    assert not missing, f"docs cite paths that do not exist: {missing}"


def test_the_path_pattern_finds_paths():
    assert cited_paths("see `docs/cpu_stack.md`, tests/conftest.py. and recipes/configs/*.yaml") == {
        "docs/cpu_stack.md", "tests/conftest.py", "recipes/configs"}
