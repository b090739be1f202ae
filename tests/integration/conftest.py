"""Session-scoped generation engines shared by every integration test.

Starting a vLLM engine costs 10-40 s (a server ~50 s), so each is started once
per test session, per model folder, and shut down at the end:

    def test_something(vllm_engine, tiny_dirs):
        engine = vllm_engine(tiny_dirs["mixtral"])        # in-process VLLMEngine
        server = vllm_server(tiny_dirs["llama"])          # VLLMServerEngine on 127.0.0.1

The first request for a folder fixes its options (defaults: max_model_len=512,
max_num_seqs=16, seed=0, KV cache sized from those: small). A test that pushes
weights must leave the checkpoint's weights behind:

    with restore_weights(engine):
        engine.update_weights(...)
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

DEFAULTS = dict(max_model_len=512, max_num_seqs=16, seed=0)


def _factory(make):
    engines: dict[str, object] = {}

    def get(model_dir, **options):
        key = str(Path(model_dir).resolve())
        if key not in engines:
            engines[key] = make(model_dir, **{**DEFAULTS, **options})
        return engines[key]

    return engines, get


@pytest.fixture(scope="session")
def vllm_engine():
    """vllm_engine(model_dir, **options) -> the session's in-process VLLMEngine for that folder."""
    pytest.importorskip("vllm")
    from rollouts.vllm_engine import VLLMEngine

    engines, get = _factory(VLLMEngine)
    yield get
    for engine in engines.values():  # the last one also tears down vLLM's process-global state
        engine.shutdown()


@pytest.fixture(scope="session")
def vllm_server():
    """vllm_server(model_dir, **options) -> the session's VLLMServerEngine (its own server process)."""
    pytest.importorskip("vllm")
    from rollouts.server_engine import VLLMServerEngine

    engines, get = _factory(VLLMServerEngine)
    yield get
    for engine in engines.values():
        engine.shutdown()


@pytest.fixture(scope="session")
def restore_weights():
    """restore_weights(engine): a context that reloads the engine's checkpoint on exit."""

    @contextmanager
    def restoring(engine):
        try:
            yield engine
        finally:
            engine.reset_weights()

    return restoring
