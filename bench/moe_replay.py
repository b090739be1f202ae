"""Train-vs-rollout KL with and without rollout routing replay (R3), on the default
upcycled MoE (smollm2-135m-moe: Mixtral, 30 MoE layers, 4 experts, top-2).

    .venv/bin/python bench/moe_replay.py [--engine vllm|hf] [--expert-noise 0.3] [--prompts 8]

1. Experts are made to differ. Right after upcycling all experts are copies of the
   dense FFN, so routing cannot matter; we add independent Gaussian noise to each
   expert's weights (`--expert-noise` x the weight's std, fixed seed). That is
   the cheap stand-in for trained, specialised experts; SGD steps would take
   minutes per step on these CPUs.
2. Rollouts: the engine samples completions with these weights (pushed in place
   with `update_weights`) and records the experts routed per token. vLLM (CPU)
   records them through router hooks in the rollouts package.
3. Trainer: transformers forwards of the sampled sequences, scored per token,
   live and with the engine's routes replayed (`kl_diagnostics`), for:
     fp32          same weights, same precision as the engine
     bf16          trainer in bfloat16 (router logits in bf16, as transformers does)
     bf16+r32      trainer in bfloat16 with router logits forced to float32
     moved-router  fp32 trainer whose routers moved (noise 0.1 x std) as an update
                   step would move them: the staleness R2/R3 address
   KL is the k3 estimate of KL(engine || trainer) on sampled tokens (mean).
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

PROMPTS = [
    "What is 17 + 25?", "Compute 9 * 8.", "What is 120 - 47?", "Is 91 a prime number?",
    "What is half of 64?", "Write the next number: 2, 4, 8, 16,", "What is 15% of 200?", "Add 333 and 444.",
    "What is 7 squared?", "How many minutes are in 3 hours?", "What is 1000 / 8?", "Spell 'seven' backwards.",
]


def diverge_experts(model, noise: float, seed: int = 0) -> None:
    """Independent noise on every expert's weights: experts stop being identical copies."""
    from grpo.moe import moe_routers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:  # stacked [E, ...]: each expert gets its own draw
                p.add_(torch.randn(p.shape, generator=g) * p[0].std() * noise)
    assert moe_routers(model), "not an MoE model"


def move_routers(model, noise: float, seed: int = 1) -> None:
    from grpo.moe import moe_routers

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in moe_routers(model):
            w = r.module.weight
            w.add_(torch.randn(w.shape, generator=g).to(w.dtype) * w.float().std() * noise)


def sample(kind: str, folder, policy, n_prompts: int, group: int, max_tokens: int):
    from rollouts import SamplingConfig, make_engine

    kw = {"model": policy} if kind == "hf" else {}
    engine = make_engine(kind, folder, max_model_len=512, max_num_seqs=16, seed=0, **kw)
    try:
        if kind != "hf":
            engine.update_weights(list(policy.named_parameters()))
        t = time.perf_counter()
        comps = engine.generate(PROMPTS[:n_prompts], group, SamplingConfig(temperature=1.0, max_tokens=max_tokens),
                                return_routing=True)
        print(f"sampled {len(comps)} completions, {sum(len(c.completion_ids) for c in comps)} tokens "
              f"with {kind} in {time.perf_counter() - t:.1f}s")
    finally:
        engine.shutdown()
    return comps


def score(name: str, model, batch) -> dict[str, float]:
    from grpo.moe import RoutingReplay
    from grpo.moe.step import kl_diagnostics

    rr = RoutingReplay(model)
    t = time.perf_counter()
    d = kl_diagnostics(model, rr, batch)
    rr.remove()
    d["time"] = time.perf_counter() - t
    print(f"  {name:<13} agreement {d['moe/router_agreement']:.4f}  tokens w/ a flip "
          f"{d['moe/tokens_route_differs']:.3f}  KL live {d['moe/kl_rollout_live']:.3e}  "
          f"KL replay {d['moe/kl_rollout_replay']:.3e}  |dlogp| live {d['moe/logprob_absdiff_live']:.3e} "
          f"replay {d['moe/logprob_absdiff_replay']:.3e}  ({d['time']:.0f}s)")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    ap.add_argument("--model", default="smollm2-135m-moe")
    ap.add_argument("--expert-noise", type=float, default=0.3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()

    from grpo.batch import RolloutBatch
    from grpo.models.loader import load_causal_lm, resolve_model
    from grpo.moe import force_router_fp32

    folder = resolve_model(args.model)
    policy = load_causal_lm(folder).eval()
    diverge_experts(policy, args.expert_noise)
    comps = sample(args.engine, folder, policy, args.prompts, args.group, args.max_tokens)
    batch = RolloutBatch.from_completions(comps, advantages=torch.zeros(len(comps)))
    print(f"rollout side: {args.engine} engine (fp32), routes recorded per token; "
          f"experts diverged with noise {args.expert_noise} x std")
    results = {"fp32": score("fp32", policy, batch)}
    bf16 = copy.deepcopy(policy).to(torch.bfloat16)
    results["bf16"] = score("bf16", bf16, batch)
    force_router_fp32(bf16)
    results["bf16+r32"] = score("bf16+r32", bf16, batch)
    del bf16
    moved = copy.deepcopy(policy)
    move_routers(moved, 0.1)
    results["moved-router"] = score("moved-router", moved, batch)
    print("\nratio KL live / KL replay (higher = replay removes more of the mismatch):")
    for name, d in results.items():
        ratio = d["moe/kl_rollout_live"] / max(d["moe/kl_rollout_replay"], 1e-12)
        print(f"  {name:<13} {ratio:8.1f}x")


if __name__ == "__main__":
    main()
