"""Weight sync under many updates on the embedded MoE (smollm2-135m-moe: 30 MoE layers x 4 experts, tied LM head).

Six rounds of: perturb one kind of the trainer's parameters (experts, router, attention, embeddings =
tied LM head, norms; the last round all of them) -> policy_weights (what training pushes) ->
engine.update_weights -> sample with the same seed -> transformers forward of those exact tokens.
Every round:
- the engine's sampling logprobs equal the trainer's (fp32: < 1e-3) and the routing agrees;
- the engine really changed: on the token prefix shared with the previous round's samples its logprobs
  moved, and the previous round's logprobs are stale for the new trainer (a missed push would fail);
- vLLM's "not loaded" report is exactly what we expect: the fused-expert weights we write directly
  (w13/w2 of every MoE layer, their RoutedExperts layers) plus the two layers no checkpoint weight
  reaches (the tied ParallelLMHead, the RotaryEmbedding's computed buffers). Anything else is an
  EngineError naming it (second test).
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest
import torch

from grpo.errors import EngineError
from grpo.models.loader import load_causal_lm, resolve_model
from rollouts import SamplingConfig, policy_weights
from rollouts.reference import compare

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = [f"What is {a} + {b}? Answer with a number." for a, b in ((3, 4), (12, 9), (7, 8), (25, 17))]
SAMPLING = SamplingConfig(temperature=1.0, max_tokens=16, seed=1234)  # the same draws every round
KINDS = {  # parameter kind -> name pattern (transformers' in-memory Mixtral names)
    "experts": r"\.mlp\.experts\.(gate_up_proj|down_proj)$",
    "router": r"\.mlp\.gate\.weight$",
    "attention": r"\.self_attn\.[qkvo]_proj\.weight$",
    "embeddings": r"^model\.embed_tokens\.weight$",  # tied: also the LM head
    "norms": r"norm\.weight$",
}
# (kind, relative scale): experts first, so that they stop being identical copies and the router matters.
ROUNDS = [("experts", 0.1), ("router", 0.3), ("attention", 0.02), ("embeddings", 0.02), ("norms", 0.02),
          ("all", 0.01)]
NOT_LOADED = re.compile(r"model\.layers\.(\d+)\.block_sparse_moe\.experts\.routed_experts\.(w13_weight|w2_weight)")


@pytest.fixture(scope="module")
def engine(vllm_engine):
    # The same options as test_embedded_vllm.py: one session engine for both.
    return vllm_engine(resolve_model("smollm2-135m-moe"), max_model_len=256, max_num_seqs=16)


def perturb(model, kind: str, scale: float, seed: int) -> int:
    """Move every parameter of `kind` by scale x its typical size; returns how many tensors moved."""
    gen = torch.Generator().manual_seed(seed)
    moved = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if kind != "all" and not re.search(KINDS[kind], name):
                continue
            size = p.std() if p.dim() > 1 else p.abs().mean()
            p.add_(torch.randn(p.shape, generator=gen) * size * scale)
            moved += 1
    return moved


def shared_prefix_shift(new, old) -> tuple[float, int]:
    """(max |engine logprob change|, positions compared) over each completion's token prefix shared with
    the previous round's completion of the same slot: same context, same token, new weights."""
    worst, n = 0.0, 0
    for a, b in zip(new, old):
        assert a.prompt_ids == b.prompt_ids
        for ta, tb, la, lb in zip(a.completion_ids, b.completion_ids, a.logprobs, b.logprobs):
            if ta != tb:
                break
            worst, n = max(worst, abs(la - lb)), n + 1
    return worst, n


def check_reload_report(engine) -> None:
    report = engine.last_reload
    found = Counter(NOT_LOADED.fullmatch(n).group(2) if NOT_LOADED.fullmatch(n) else n for n in report.not_loaded)
    layers = sorted({int(NOT_LOADED.fullmatch(n).group(1)) for n in report.not_loaded if NOT_LOADED.fullmatch(n)})
    n_moe = len(engine.moe_layer_ids)
    assert found == {"w13_weight": n_moe, "w2_weight": n_moe}, sorted(report.not_loaded)
    assert layers == engine.moe_layer_ids
    assert Counter(report.failed_layers) == {"RoutedExperts": n_moe, "ParallelLMHead": 1, "RotaryEmbedding": 1}


def test_many_sync_rounds_keep_engine_and_trainer_equal(engine, restore_weights):
    trainer = load_causal_lm(engine.model_dir).eval()
    counts = {k: sum(bool(re.search(p, n)) for n, _ in trainer.named_parameters()) for k, p in KINDS.items()}
    assert sum(counts.values()) == len(list(trainer.parameters())), "every parameter has a kind"
    prev = engine.generate(PROMPTS, 2, SAMPLING, return_routing=True)
    err, share = compare(trainer, prev, 1.0)
    print(f"\n[round 0, base] max |logprob diff| {err:.2e}, routing agreement {share:.4f}")
    assert err < 1e-3
    rows = []
    with restore_weights(engine):
        for r, (kind, scale) in enumerate(ROUNDS, start=1):
            moved = perturb(trainer, kind, scale, seed=r)
            assert moved == (sum(counts.values()) if kind == "all" else counts[kind]) > 0
            stale, _ = compare(trainer, prev, 1.0)  # what a missed push would leave us with
            t0 = time.perf_counter()
            with policy_weights(trainer) as weights:
                engine.update_weights(weights)
            t_sync = time.perf_counter() - t0
            check_reload_report(engine)
            out = engine.generate(PROMPTS, 2, SAMPLING, return_routing=True)
            err, share = compare(trainer, out, 1.0)
            shift, n_shared = shared_prefix_shift(out, prev)
            rows.append((r, kind, err, share, shift, n_shared, stale, t_sync))
            print(f"[round {r}, {kind} x{scale}] max |logprob diff| {err:.2e}, routing {share:.4f}, "
                  f"engine shift on {n_shared} shared tokens {shift:.2e}, stale error {stale:.2e}, "
                  f"sync {t_sync:.2f} s")
            assert err < 1e-3, f"round {r} ({kind}): engine and trainer disagree by {err:.2e}"
            assert share >= 0.95, f"round {r} ({kind}): routing agreement {share:.4f}"
            assert n_shared > 0 and shift > 1e-2, f"round {r} ({kind}): the engine did not change"
            assert stale > 1e-2, f"round {r} ({kind}): the perturbation must be visible"
            prev = out
    assert len(rows) >= 5
    del trainer
    base = load_causal_lm(engine.model_dir).eval()  # restore_weights put the checkpoint back
    assert compare(base, engine.generate(PROMPTS, 2, SAMPLING), 1.0)[0] < 1e-3
    assert engine.last_reload.not_loaded == set()
    assert Counter(engine.last_reload.failed_layers) == {"ParallelLMHead": 1, "RotaryEmbedding": 1}


def test_an_update_that_misses_weights_is_an_error_naming_them(engine, restore_weights, monkeypatch):
    trainer = load_causal_lm(engine.model_dir).eval()
    perturb(trainer, "all", 0.01, seed=99)
    with policy_weights(trainer) as weights, restore_weights(engine):
        # Part of a fused qkv: vLLM itself would load the rest and report nothing (garbage in k's rows).
        k = "model.layers.3.self_attn.k_proj.weight"
        with pytest.raises(EngineError, match=re.escape(k)):
            engine.update_weights([(n, t) for n, t in weights if n != k])
        # What vLLM reports as not loaded is checked, not muted: a weight our conversion did not hand over.
        monkeypatch.setattr(engine._namer, "missing", lambda cleaned: [])
        o = "model.layers.3.self_attn.o_proj.weight"
        with pytest.raises(EngineError, match=re.escape(o) + r".*RowParallelLinear"):
            engine.update_weights([(n, t) for n, t in weights if n != o])
        assert o in engine.last_reload.not_loaded
