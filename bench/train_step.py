"""Train-phase throughput: our packed policy update vs TRL 1.16 GRPOTrainer, side by side.

Same model, same batch (4 prompts x G=8 completions, <= 64 completion tokens, chat-template
prompts), same loss settings (DAPO loss, beta 0, one iteration, no IS correction, fp32, no
gradient checkpointing). Measured: the train phase only = forward + loss + backward over the
whole batch (no optimiser step, no generation): TRL's `compute_loss` + `backward()` on its
padded batch in 4 accumulation steps of 8 sequences, vs ours (`accumulate_gradients` on packed
shared-prompt micro-batches of <= 4096 slots, rows sized by `auto_row_tokens`).

Completion tokens are random ids of random lengths (compute does not depend on the text),
rewards are random with every group mixed (no zero-advantage group: nothing is skipped).

MFU counts 6 * params * unique tokens FLOPs per train phase (forward 2, backward 4 per
parameter and token; attention scores not counted; for MoE, params = the *active* ones: all
non-expert weights + top_k / n_experts of the expert weights), where unique tokens = each
prompt once + every completion token, the minimum any implementation must process. The peak
is an fp32 2048^3 matmul measured in this run.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.train_step [--models smollm2-135m smollm2-135m-moe] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
PROMPTS, G, MAX_TOKENS, SEED = 4, 8, 64, 0


def matmul_peak_gflops(n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _timed_both(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds. On a shared machine CPU time is the steadier of the two."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def active_params(model) -> int:
    """All parameters, with routed-expert weights counted at top_k / n_experts."""
    cfg = model.config
    n_exp = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    k = getattr(cfg, "num_experts_per_tok", None)
    total = 0
    for name, p in model.named_parameters():
        is_expert = ".experts." in name or name.endswith(("experts.gate_up_proj", "experts.down_proj"))
        total += p.numel() * (k / n_exp if (is_expert and n_exp and k) else 1)
    return int(total)


def make_batch(tok, vocab: int):
    import torch

    from grpo.advantages import compute_advantages
    from grpo.batch import RolloutBatch

    g = torch.Generator().manual_seed(SEED)
    prompts, comps, gids, rewards, trunc = [], [], [], [], []
    for b in range(PROMPTS):
        x, y = torch.randint(1, 10, (2,), generator=g).tolist()
        msgs = [{"role": "user", "content": f"What is {x} + {y}? Answer with a number."}]
        p = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        p = list(p["input_ids"] if isinstance(p, dict) else p)
        for k in range(G):
            n = int(torch.randint(16, MAX_TOKENS + 1, (1,), generator=g))
            c = torch.randint(100, vocab, (n,), generator=g).tolist()
            if n < MAX_TOKENS:
                c[-1] = tok.eos_token_id
            prompts.append(p)
            comps.append(c)
            gids.append(b)
            rewards.append(float(k % 2 == 0) if k < 2 else float(torch.rand(1, generator=g) < 0.5))
            trunc.append(n == MAX_TOKENS)
    adv = compute_advantages(rewards, gids, "group")
    return RolloutBatch(prompts, comps, [[] for _ in comps], adv, gids, trunc)


def trl_inputs(batch, pad_id: int) -> dict:
    import torch

    N, P = len(batch), max(map(len, batch.prompt_ids))
    prompt_ids, prompt_mask = torch.full((N, P), pad_id), torch.zeros(N, P, dtype=torch.long)
    for i, p in enumerate(batch.prompt_ids):  # TRL left-pads prompts, right-pads completions
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
    mask = batch.completion_mask().long()
    comp = torch.full(mask.shape, pad_id)
    for i, c in enumerate(batch.completion_ids):
        comp[i, : len(c)] = torch.tensor(c)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp,
            "completion_mask": mask, "advantages": batch.advantages, "num_items_in_batch": mask.sum()}


def import_trl():
    hide = "vllm" not in sys.modules
    if hide:
        sys.modules["vllm"] = None  # TRL only probes vLLM; importing it costs ~10 s
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from trl import GRPOConfig, GRPOTrainer
    finally:
        if hide:
            del sys.modules["vllm"]
    return GRPOConfig, GRPOTrainer


TRL_MICRO = 8  # TRL per_device_train_batch_size: 4 accumulation steps of 8 sequences (memory, as usual)


def build_trl(model, tok, batch):
    from datasets import Dataset

    GRPOConfig, GRPOTrainer = import_trl()
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=TRL_MICRO,
        gradient_accumulation_steps=len(batch) // TRL_MICRO, num_generations=G,
        max_completion_length=MAX_TOKENS, loss_type="dapo", beta=0.0, temperature=1.0, report_to=[],
        use_cpu=True, save_strategy="no", bf16=False, gradient_checkpointing=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=Dataset.from_dict({"prompt": ["x"]}), processing_class=tok)
    trainer.current_gradient_accumulation_steps = len(batch) // TRL_MICRO  # set by the HF loop in training
    return trainer


def bench_model(name: str, reps: int, peak: float, with_plain: bool) -> dict:
    from grpo.config import AlgoConfig, OptimConfig
    from grpo.models.loader import load_causal_lm, load_tokenizer, resolve_model
    from grpo.packing import auto_row_tokens
    from grpo.update import PassInputs, accumulate_gradients, plan_update

    folder = resolve_model(name)
    model, tok = load_causal_lm(folder), load_tokenizer(folder)
    model.train()
    batch = make_batch(tok, model.config.vocab_size)
    algo = AlgoConfig(loss="dapo", epsilon_high=0.28, is_correction="none")
    variants = {  # "padded rows": max_row_tokens=1 puts one sequence per row, rows padded to the longest
        "ours packed+shared prompt": OptimConfig(shared_prompt=True),
        "ours padded rows": OptimConfig(shared_prompt=False),
    }
    if with_plain:
        variants["ours packed (no sharing)"] = OptimConfig(shared_prompt=False)
    rows = auto_row_tokens(model, OptimConfig().micro_batch_tokens)  # what policy_update uses
    plans = {k: plan_update(batch, algo, o, max_tokens=MAX_TOKENS, max_row_tokens=1 if "padded" in k else rows)
             for k, o in variants.items()}
    inp = PassInputs(batch.sampler_logp(), temperature=1.0, chunk=8192)
    trainer = build_trl(model, tok, batch)
    inputs = trl_inputs(batch, tok.pad_token_id)  # padded once for the whole batch, as TRL does
    chunks = [{k: (v if k == "num_items_in_batch" else v[i:i + TRL_MICRO]) for k, v in inputs.items()}
              for i in range(0, len(batch), TRL_MICRO)]

    def ours(plan):
        accumulate_gradients(model, batch, plan, algo, inp)
        model.zero_grad(set_to_none=True)

    def trl():
        for c in chunks:  # gradient accumulation, as TRL's Trainer loop runs it
            trainer.compute_loss(model, c).backward()
        model.zero_grad(set_to_none=True)

    runs = {k: (lambda p=p: ours(p)) for k, p in plans.items()}
    runs["TRL GRPOTrainer"] = trl
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(reps):  # interleaved: load from other processes hits all variants alike
        for k, fn in runs.items():
            w, c = _timed_both(fn)
            times[k].append(w)
            cpu[k].append(c)
    unique = sum(len(p) for p in {tuple(p) for p in batch.prompt_ids}) + batch.num_completion_tokens
    flops = 6 * active_params(model) * unique
    best = {k: min(v) for k, v in times.items()}
    pk = plans["ours packed+shared prompt"].micro_batches
    return dict(model=name, best=best, times=times, best_cpu={k: min(v) for k, v in cpu.items()}, unique=unique,
                completion_tokens=batch.num_completion_tokens,
                flops=flops, peak=peak, trl_slots=int(inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()),
                our_slots=sum(mb.num_slots for mb in pk), micro_batches=len(pk))


def report(r: dict) -> None:
    best, trl = r["best"], r["best"]["TRL GRPOTrainer"]
    print(f"\n== {r['model']}: {PROMPTS} prompts x G={G}, {r['completion_tokens']} completion tokens, "
          f"{r['unique']} unique tokens; TRL pads to {r['trl_slots']} slots, ours packs into {r['our_slots']} "
          f"({r['micro_batches']} micro-batch(es))")
    cpu, trl_cpu = r["best_cpu"], r["best_cpu"]["TRL GRPOTrainer"]
    print(f"{'variant':28s} {'best wall s':>11s} {'runs s':>20s} {'compl tok/s':>12s} {'MFU':>6s} {'vs TRL':>7s}"
          f" {'best CPU s':>11s} {'vs TRL':>7s}")
    for k, t in best.items():
        runs = ",".join(f"{x:.1f}" for x in r["times"][k])
        mfu = r["flops"] / t / 1e9 / r["peak"]
        print(f"{k:28s} {t:11.2f} {runs:>20s} {r['completion_tokens'] / t:12.1f} {mfu:6.1%} {trl / t:6.2f}x"
              f" {cpu[k]:11.2f} {trl_cpu / cpu[k]:6.2f}x")
    k = "ours packed+shared prompt"
    print(f"speed-up vs TRL train phase: {trl / best[k]:.2f}x wall, {trl_cpu / cpu[k]:.2f}x CPU time;  "
          f"ours padded rows / ours packed+shared: {best['ours padded rows'] / best[k]:.2f}x wall")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "smollm2-135m-moe"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--with-plain", action="store_true", help="also time packing without prompt sharing")
    args = ap.parse_args()
    import torch

    torch.manual_seed(SEED)
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak (2048^3, best of 5): {peak:.1f} GFLOP/s, torch threads {torch.get_num_threads()}")
    print("MFU = 6 * active params * unique tokens / time / peak (attention-score FLOPs not counted)")
    for name in args.models:
        report(bench_model(name, args.reps, peak, args.with_plain))


if __name__ == "__main__":
    main()
