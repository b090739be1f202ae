"""Rollout throughput: VLLMEngine vs HFEngine vs raw `vllm.LLM.generate`, side by side,
plus the in-place weight-sync time.

Same model, same prompts (chat template), same sampling (temperature 1, top-p 1,
`--max-tokens` completion tokens at most, one sampled-token logprob each), in
one process. Raw vLLM is `LLM.generate(prompts, SamplingParams(n=G, logprobs=0))`
on the very LLM instance VLLMEngine wraps, so the ratio is exactly our wrapper's
cost (prompt encoding, per-sample requests, decoding, Completion records).
Completion tokens actually produced are counted (EOS may end a sample early).
Rounds interleave the engines (HF runs once: minutes on 2 cores); the best round
of each is reported, with the machine's load average (other jobs skew all numbers).

Weight sync: `update_weights(trainer.named_parameters())` on the ~400M-parameter
upcycled MoE (fused in-memory expert names -> checkpoint names -> in-place
reload -> prefix-cache reset), median of `--syncs` pushes.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.rollout_throughput [--model smollm2-135m-moe]
        [--prompts 4] [--group-size 8] [--max-tokens 128] [--rounds 3] [--skip-hf]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "What is 17 + 25? Explain step by step.", "Write a short poem about the sea.",
    "List three uses of a paperclip.", "Explain why the sky is blue.",
    "What is 120 - 47? Show your work.", "Describe a cat to someone who has never seen one.",
    "Give me a recipe for pancakes.", "What are prime numbers?",
]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_engine(engine, prompts, g, sampling) -> tuple[int, float]:
    out, secs = timed(lambda: engine.generate(prompts, g, sampling))
    return sum(len(c.completion_ids) for c in out), secs


def run_raw(llm, prompt_ids, g, sampling) -> tuple[int, float]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(n=g, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_tokens, logprobs=0)
    reqs = [TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
    out, secs = timed(lambda: llm.generate(reqs, params, use_tqdm=False))
    return sum(len(o.token_ids) for r in out for o in r.outputs), secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-moe")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--syncs", type=int, default=3)
    ap.add_argument("--skip-hf", action="store_true", help="HF generate is slow (minutes on 2 cores)")
    args = ap.parse_args()

    from grpo.models.loader import load_causal_lm, resolve_model
    from rollouts import SamplingConfig, make_engine, policy_weights
    from rollouts.prompts import encode_prompts

    folder = resolve_model(args.model)
    prompts = PROMPTS[: args.prompts]
    g, n = args.group_size, args.prompts * args.group_size
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=args.max_tokens)
    max_len = 512 + args.max_tokens
    vllm_engine, start = timed(lambda: make_engine("vllm", folder, max_model_len=max_len, max_num_seqs=n, seed=0))
    prompt_ids = encode_prompts(vllm_engine.tokenizer, prompts)
    print(f"model {args.model}: {len(prompts)} prompts x G={g} = {n} completions of <= {args.max_tokens} tokens; "
          f"vLLM engine start {start:.1f} s")

    warm = SamplingConfig(temperature=1.0, max_tokens=8)
    vllm_engine.generate(prompts, g, warm)  # first-call costs (allocations) out of the measurement
    trainer = load_causal_lm(folder)
    hf = None
    if not args.skip_hf:
        hf = make_engine("hf", folder, max_model_len=max_len, max_num_seqs=n, seed=0, model=trainer)
        hf.generate(prompts[:1], 2, warm)
    hf_name = "HFEngine (transformers generate)"
    results: dict[str, list[tuple[int, float]]] = {"VLLMEngine": [], "raw vllm.LLM.generate": []}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):  # interleaved, so machine load hits every variant alike
        results["VLLMEngine"].append(run_engine(vllm_engine, prompts, g, sampling))
        results["raw vllm.LLM.generate"].append(run_raw(vllm_engine._llm, prompt_ids, g, sampling))
        if hf is not None and r == 0:  # minutes per run on 2 cores: once
            results[hf_name] = [run_engine(hf, prompts, g, sampling)]
        print(f"round {r}: " + ", ".join(f"{k} {v[-1][0] / v[-1][1]:.1f} tok/s" for k, v in results.items()),
              flush=True)
    load.append(os.getloadavg()[0])

    n_params = sum(p.numel() for p in trainer.parameters())
    syncs = []
    for _ in range(args.syncs):
        with policy_weights(trainer) as weights:
            _, secs = timed(lambda: vllm_engine.update_weights(weights))
        syncs.append(secs)
    vllm_engine.shutdown()

    best = {k: max(v, key=lambda r: r[0] / r[1]) for k, v in results.items()}
    rate = {k: t / s for k, (t, s) in best.items()}
    ours = rate["VLLMEngine"]
    print("\n| engine | completion tokens | seconds | tokens/s | VLLMEngine is x faster |")
    print("|---|---:|---:|---:|---:|")
    for k, (t, s) in best.items():
        print(f"| {k} | {t} | {s:.2f} | {rate[k]:.1f} | {ours / rate[k]:.2f} |")
    sync = statistics.median(syncs)
    print(f"\n| weight sync ({n_params / 1e6:.0f}M params, in place) | median s | all pushes (s) |")
    print("|---|---:|---|")
    print(f"| VLLMEngine.update_weights | {sync:.2f} | {', '.join(f'{s:.2f}' for s in syncs)} |")
    print(f"\nmachine load average (1 min) {load[0]:.1f} -> {load[1]:.1f} on {os.cpu_count()} cores")
    print("targets: VLLMEngine >= 5x HFEngine, >= 0.9x raw vLLM; weight sync <= 3 s")
    print(f"VLLMEngine / raw vLLM = {ours / rate['raw vllm.LLM.generate']:.2f}"
          + (f"; VLLMEngine / HFEngine = {ours / rate[hf_name]:.1f}" if hf_name in rate else ""))


if __name__ == "__main__":
    main()
