"""Engine support code that needs no vLLM: errors, sizing, sampling arguments, routing fill."""

from __future__ import annotations

import time

import numpy as np
import pytest

from grpo.errors import EngineError
from rollouts import NO_ROUTE, SamplingConfig
from rollouts.http import request_json
from rollouts.server_process import free_port, root_cause, server_command
from rollouts.vllm_common import call_seed, kv_bytes_per_token, kv_cache_bytes, sampling_kwargs
from rollouts.vllm_routing import fill_shared_prefix

VLLM_LOG = """\
(APIServer pid=1) INFO 11-24 [api_server.py:1] vLLM API server version 0.32.0
(EngineCore pid=2) ERROR 11-24 [core.py:1] EngineCore failed to start.
(EngineCore pid=2) ERROR 11-24 [core.py:1] Traceback (most recent call last):
(EngineCore pid=2) ERROR 11-24 [core.py:1]   File "core.py", line 10, in run
(EngineCore pid=2) ERROR 11-24 [core.py:1]     raise ValueError(msg)
(EngineCore pid=2) ERROR 11-24 [core.py:1] ValueError: Available memory on node 0 (8.3/21.2 GiB) \
is less than requested memory for kv (200.0 GiB).
Traceback (most recent call last):
  File "api_server.py", line 3, in <module>
    raise RuntimeError("Engine core initialization failed. See root cause above.")
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_root_cause_skips_generic_wrappers():
    msg = root_cause(VLLM_LOG)
    assert msg.startswith("ValueError: Available memory on node 0") and "\n" not in msg
    assert root_cause("") == "no output (see the log)"
    assert "killed" in root_cause("loading...\nkilled")


def test_unreachable_server_is_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}/health"  # nothing listens there (loopback only)
    t = time.monotonic()
    with pytest.raises(EngineError) as e:
        request_json(url, retries=2, backoff=0.05, timeout=2)
    assert time.monotonic() - t < 10
    assert "unreachable after 3 attempts" in str(e.value) and "running" in str(e.value)


def test_server_command_runs_module_with_dev_flags():
    cmd = server_command("/m", 8000, max_model_len=256, max_num_seqs=4, seed=3, kv_cache_bytes=1 << 20)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    assert "--host 127.0.0.1" in joined and "--kv-cache-memory-bytes 1048576" in joined
    assert "--logprobs-mode processed_logprobs" in joined and "--worker-extension-cls" in joined


def test_kv_cache_sized_from_the_run(tiny_dirs):
    per = kv_bytes_per_token(tiny_dirs["llama"])
    assert per == 2 * 2 * 2 * 32 * 4  # layers * (K,V) * kv heads * head_dim * fp32
    small = kv_cache_bytes(tiny_dirs["llama"], max_model_len=256, max_num_seqs=4)
    big = kv_cache_bytes(tiny_dirs["llama"], max_model_len=1024, max_num_seqs=16)
    assert small < big and small >= 4 * 256 * per
    assert kv_cache_bytes(tiny_dirs["llama"], 256, 4, kv_cache_gb=0.5) == 1 << 29
    with pytest.raises(EngineError):
        kv_cache_bytes(tiny_dirs["llama"], 256, 4, kv_cache_gb=0)
    assert kv_bytes_per_token(tiny_dirs["deepseek_v3"]) == 3 * (32 + 16) * 4  # MLA latent + rope key


def test_sampling_arguments():
    kw = sampling_kwargs(SamplingConfig(temperature=0.7, top_p=0.9, top_k=0, max_tokens=5, stop=("\n",)))
    assert kw["temperature"] == 0.7 and kw["top_k"] == 0 and kw["logprobs"] == 0 and kw["stop"] == ["\n"]
    assert sampling_kwargs(SamplingConfig())["stop"] is None
    with pytest.raises(EngineError, match="top_p"):
        sampling_kwargs(SamplingConfig(top_p=0))
    with pytest.raises(EngineError, match="temperature"):
        sampling_kwargs(SamplingConfig(temperature=-1))


def test_call_seed():
    assert call_seed(0, 5, 123) == 123
    assert call_seed(1, 0, None) == call_seed(1, 0, None) != call_seed(1, 1, None) != call_seed(2, 1, None)


def test_prefix_cache_holes_filled_from_requests_sharing_the_prefix():
    k = NO_ROUTE
    full = np.arange(6 * 1 * 2, dtype=np.int16).reshape(6, 1, 2)  # donor computed every row
    hole = full.copy()
    hole[:3] = k  # served from the prefix cache
    other = full.copy()
    other[:] = k
    seqs = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9, 9], [7, 2, 3, 4, 5, 6]]
    routes = [full, hole, other]
    fill_shared_prefix(routes, seqs, prompt_lens=[4, 4, 4])
    assert (routes[1] == full).all()  # same first 4 tokens -> same routing
    assert (routes[2][:4] == k).all()  # different first token: nothing may be copied


def test_server_stop_kills_the_whole_process_group(tmp_path):
    import os
    import subprocess

    from rollouts.server_process import ServerProcess

    pid_file = tmp_path / "child"
    # a parent with a child, like the API server and its engine-core process
    proc = subprocess.Popen(["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], start_new_session=True)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        time.sleep(0.05)
    child = int(pid_file.read_text())
    ServerProcess(proc, "http://127.0.0.1:1", tmp_path / "log").stop(timeout=5)
    assert proc.poll() is not None
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{child}/stat") as f:  # reaped by init shortly: a zombie counts as gone
            if f.read().split()[2] == "Z":
                break
        time.sleep(0.05)
    else:
        raise AssertionError("the child of the server process survived stop()")
