"""Shared fixtures. Tests never touch the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def tiny_dirs():
    """Folders of the tiny test models, built once per machine (cached)."""
    from grpo.models.tiny import TINY_ARCHS, tiny_model_dir

    return {arch: tiny_model_dir(arch) for arch in TINY_ARCHS}
