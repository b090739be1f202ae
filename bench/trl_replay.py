"""Does our update differ from TRL's, or only our samples? TRL's own sampled batches, step by step,
replayed through our update from the same initial weights; the weights compared after every step.

1. `--worker trl`: TRL 1.16 `GRPOTrainer` at the e2e bench's settings (bench/e2e_vs_trl.py:
   smollm2-135m-moe, 4 prompts x G=8, <= 64 tokens, lr 1e-5 constant, betas (0.9, 0.99), clip 1.0,
   beta 0, loss "grpo", group-std advantages) for `--steps` steps. Each step's `_compute_loss`
   inputs (prompt / completion ids and masks, advantages) are recorded, and the weights after the
   step are saved.
2. `--worker replay`: our `policy_update` (packed, shared-prompt micro-batches, AdamW + schedule
   built by `grpo.optim.build_optimizer` from the same run config) on those exact batches, in
   order, from the base weights. TRL generated with transformers, which records no sampling
   log-probs, so the IS correction is off and there is no routing to replay (R3 off).

Reported per step: ||w_ours - w_TRL|| / ||w_TRL(step) - w_TRL(step - 1)|| (the difference relative
to one step's update) and the worst single parameter tensor. A relative difference far below 1
after several steps means the two updates are the same map from samples to weights, so any gap in
learning comes from the samples.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.trl_replay [--steps 3] [--seed 0] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import emit_result, run_group  # noqa: E402

BATCH_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")


def worker_trl(a) -> dict:
    """TRL's loop for `a.steps` steps; every step's loss inputs and the weights after it go to disk."""
    import torch
    from safetensors.torch import save_file
    from transformers import TrainerCallback

    from bench.e2e_vs_trl import build_trl_trainer

    out = Path(a.out)
    trainer, pool = build_trl_trainer(a.model, out, max_steps=a.steps, seed=a.seed, vllm=False)
    batches: list[dict] = []
    inner = trainer._compute_loss

    def recording_loss(model, inputs):
        batches.append({k: inputs[k].detach().clone() for k in BATCH_KEYS})
        return inner(model, inputs)

    trainer._compute_loss = recording_loss

    class SaveWeights(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            w = {n: p.detach().contiguous().clone() for n, p in trainer.model.named_parameters()}
            save_file(w, str(out / f"trl-step-{state.global_step}.safetensors"))

    trainer.add_callback(SaveWeights())
    try:
        trainer.train()
    finally:
        pool.close()
    torch.save(batches, out / "trl_batches.pt")
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"steps": len(batches), "train_reward": rewards}


def rollout_batch_from_trl(b: dict):
    """TRL's padded loss inputs -> our RolloutBatch (prompts left-padded, completions up to and
    including the first EOS; TRL's completion mask already ends there)."""
    from grpo.batch import RolloutBatch

    prompts, comps = [], []
    for ids, m in zip(b["prompt_ids"], b["prompt_mask"]):
        prompts.append(ids[m.bool()].tolist())
    for ids, m in zip(b["completion_ids"], b["completion_mask"]):
        comps.append(ids[m.bool()].tolist())
    full = b["completion_mask"].shape[1]
    # Group by prompt text: TRL shuffles the batch before the loss, which does not change the loss.
    group_of: dict[tuple, int] = {}
    groups = [group_of.setdefault(tuple(p), len(group_of)) for p in prompts]
    return RolloutBatch(prompt_ids=prompts, completion_ids=comps, sampler_logprobs=[[] for _ in comps],
                        advantages=b["advantages"].float(), group_ids=groups,
                        truncated=[len(c) == full and int(m[-1]) == 1 for c, m in
                                   zip(comps, b["completion_mask"])])


def worker_replay(a) -> dict:
    import torch
    from safetensors.torch import load_file

    from bench.e2e_vs_trl import run_config
    from grpo.models.loader import load_causal_lm, resolve_model
    from grpo.optim import build_optimizer
    from grpo.update import policy_update

    out = Path(a.out)
    cfg = run_config(a.model, out / "run", steps=a.steps, seed=a.seed)
    algo = cfg.algo
    algo.is_correction = "none"  # TRL's transformers sampler records no log-probs
    model = load_causal_lm(resolve_model(a.model))
    opt, sched = build_optimizer(model, cfg.optim, cfg.train.steps)
    batches = torch.load(Path(a.trl_dir) / "trl_batches.pt")
    prev = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = []
    for step, b in enumerate(batches, start=1):
        batch = rollout_batch_from_trl(b)
        m = policy_update(model, opt, sched, batch, algo, cfg.optim, temperature=cfg.rollout.temperature,
                          max_tokens=cfg.rollout.max_tokens)
        trl = load_file(str(Path(a.trl_dir) / f"trl-step-{step}.safetensors"))
        diff2 = upd2 = 0.0
        worst, worst_name = 0.0, ""
        for n, p in model.named_parameters():
            t = trl[n]
            d = float((p.detach() - t).pow(2).sum())
            u = float((t - prev[n]).pow(2).sum())
            diff2, upd2 = diff2 + d, upd2 + u
            rel = (d / u) ** 0.5 if u > 0 else (0.0 if d == 0 else float("inf"))
            if rel > worst:
                worst, worst_name = rel, n
        prev = trl
        rows.append({"step": step, "rel_diff": (diff2 / upd2) ** 0.5 if upd2 else float("nan"),
                     "update_norm": upd2 ** 0.5, "worst_param_rel": worst, "worst_param": worst_name,
                     "loss": m["loss"], "grad_norm": m["grad_norm"], "sequences": m["sequences"],
                     "zero_gradient_step": m["zero_gradient_step"]})
        print(f"step {step}: |w_ours - w_TRL| / |TRL's step update| = {rows[-1]['rel_diff']:.2e}; "
              f"worst tensor {worst_name} {worst:.2e}; loss {m['loss']:+.5f}, grad norm {m['grad_norm']:.4f}",
              flush=True)
    return {"rows": rows}


WORKERS = {"trl": worker_trl, "replay": worker_replay}


def spawn(kind: str, out: Path, timeout: float, **kw) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.trl_replay", "--worker", kind, "--out", str(out)]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    print(f"[{time.strftime('%H:%M:%S')}] {kind} {kw}", flush=True)
    log = out / f"{kind}.log"
    with open(log, "w") as f:
        rc, _, _ = run_group(cmd, timeout, stdout=f, stderr=f)
    res = out / "result.json"
    if rc != 0 or not res.is_file():
        raise SystemExit(f"{kind} worker failed (rc={rc}); log: {log}\n" + log.read_text()[-2000:])
    return json.loads(res.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-moe")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--trl-dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = WORKERS[a.worker](a)
        Path(a.out, "result.json").write_text(json.dumps(result))
        return
    work = Path(a.workdir or tempfile.mkdtemp(prefix="trl_replay-"))
    trl = spawn("trl", work / "trl", 3600, model=a.model, steps=a.steps, seed=a.seed)
    rep = spawn("replay", work / "replay", 1800, model=a.model, steps=a.steps, seed=a.seed, trl_dir=work / "trl")
    print(f"\n## TRL's sampled batches through our update ({a.model}, seed {a.seed}, {a.steps} steps)\n")
    print("| step | sequences with A != 0 | our loss | our grad norm | TRL's step update norm | "
          "relative weight difference | worst tensor (relative) |")
    print("|---|---|---|---|---|---|---|")
    for r in rep["rows"]:
        print(f"| {r['step']} | {r['sequences']:.0f} | {r['loss']:+.5f} | {r['grad_norm']:.4f} | "
              f"{r['update_norm']:.4f} | {r['rel_diff']:.2e} | {r['worst_param']} {r['worst_param_rel']:.2e} |")
    print(f"\nTRL training reward per step: {trl['train_reward']}")
    for f in (work / "trl").glob("trl-step-*.safetensors"):
        f.unlink()
    print(f"logs: {work}")
    emit_result("trl_replay", {"rows": rep["rows"], "trl_train_reward": trl["train_reward"], "seed": a.seed})


if __name__ == "__main__":
    main()
