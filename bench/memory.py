"""Memory: peak RSS per phase of a short `make demo` run, and the largest model that trains in this RAM.

Part 1 runs the demo recipe itself (`recipes.train_grpo.main` on recipes/configs/demo.yaml,
`--demo-steps` steps instead of 30, both held-out evals, final checkpoint and plots) and samples
the RSS of the whole process tree (trainer + in-process vLLM engine + reward workers) every
50 ms, tagged by phase (policy load, engine start, eval, generate, reward, train, sync,
checkpoint). Memory is at steady state after the first optimiser step (AdamW state allocated),
so a short run peaks where the 30-step demo does. The vLLM KV-cache reservation is inside the
engine's RSS; its configured size is printed too.

Part 2 measures one full GRPO train step (policy_update: 4 prompts x G=8, <= 64 tokens, AdamW)
in a fresh process per (model, mode) on two sizes -- smollm2-135m (dense, 135M) and
smollm2-135m-moe (370M) -- with full fine-tuning and with LoRA (r=16 on q/k/v/o): peak RSS
minus the RSS before the model loaded, per parameter. The largest trainable model is then an
EXTRAPOLATION, linear in parameter count: the demo's measured peak plus (train bytes/param +
engine bytes/param) x the extra parameters, against this machine's RAM.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.memory [--demo-steps 3] [--skip-demo] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from bench.common import (  # noqa: E402
    GIB,
    RssMonitor,
    emit_result,
    md_table,
    mem_total_bytes,
    reset_peak_rss,
    run_group,
    self_peak_rss_bytes,
    tree_rss_bytes,
)

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "configs" / "demo.yaml"
SIZES = ("smollm2-135m", "smollm2-135m-moe")
DEMO_TARGET = 12 * GIB


def _in_phase(mon: RssMonitor, name: str, fn):
    @functools.wraps(fn)
    def wrapped(*a, **kw):
        label = name if mon.current == mon.base else f"{mon.current}/{name}"
        with mon.phase(label):
            return fn(*a, **kw)
    return wrapped


def demo_memory(steps: int, overrides: list[str]) -> dict:
    """Run the demo recipe for `steps` steps with every phase's peak RSS recorded."""
    import recipes.train_grpo as recipe
    import rewards.scorer
    from grpo.config_io import load_config
    from rollouts.vllm_common import kv_cache_bytes
    from rollouts.vllm_engine import VLLMEngine

    mon = RssMonitor(base="other (data, plots, ...)").start()
    before = tree_rss_bytes()
    patches = [(recipe, "build_policy", "load policy"), (recipe, "start_engine", "engine start"),
               (recipe, "run_eval", "eval"), (VLLMEngine, "generate", "generate"),
               (rewards.scorer.RewardScorer, "__call__", "reward"), (recipe, "policy_update", "train"),
               (recipe, "sync_weights", "sync"), (recipe, "save_checkpoint", "checkpoint")]
    for owner, attr, label in patches:
        setattr(owner, attr, _in_phase(mon, label, getattr(owner, attr)))
    engine_rss = {}
    start_engine = recipe.start_engine

    def measured_engine(*a, **kw):
        engine_rss["before"] = tree_rss_bytes()
        engine = start_engine(*a, **kw)
        engine_rss["after"] = tree_rss_bytes()
        return engine
    recipe.start_engine = measured_engine

    out = Path(tempfile.mkdtemp(prefix="bench_memory-"))
    cfg = load_config(DEMO, [f"train.steps={steps}", f"train.output_dir={out}", "train.run_name=demo"] + overrides)
    t = time.perf_counter()
    summary = recipe.main(cfg)
    secs = time.perf_counter() - t
    mon.stop()
    r = cfg.rollout
    n_seqs = max(cfg.train.prompts_per_step * r.group_size, 8)
    from grpo.models.loader import resolve_model

    folder = resolve_model(cfg.model.name)
    kv = kv_cache_bytes(folder, r.max_model_len, n_seqs, r.kv_cache_gb)
    params = _param_count(folder)
    return {"phases": mon.peaks, "peak": mon.peak, "self_peak": self_peak_rss_bytes(), "before": before,
            "engine_delta": engine_rss["after"] - engine_rss["before"], "kv_cache": kv, "params": params,
            "steps": steps, "seconds": secs, "run_dir": summary["run_dir"]}


def _param_count(folder: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():
                n += _prod(st.get_slice(k).get_shape())
    return n


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


# ------------------------------------------------------------------ per-parameter scaling --
def train_step_memory(model_name: str, lora: bool) -> dict:
    """Peak RSS of two GRPO train steps (the 2nd has AdamW state), minus the RSS before loading."""
    import torch

    from bench.train_step import make_batch
    from grpo.config import AlgoConfig, ModelConfig, OptimConfig
    from grpo.models.loader import load_causal_lm, load_tokenizer, resolve_model
    from grpo.optim import build_optimizer, prepare_model
    from grpo.update import policy_update

    torch.manual_seed(0)
    folder = resolve_model(model_name)
    tok = load_tokenizer(folder)
    reset_peak_rss()  # this worker's parent ran the demo (~10 GiB): its high-water mark came along
    base = tree_rss_bytes()
    mcfg = ModelConfig(name=model_name)
    mcfg.lora.enabled = lora
    model = prepare_model(load_causal_lm(folder), mcfg)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optim_cfg = OptimConfig()
    opt, sched = build_optimizer(model, optim_cfg, 10)
    batch = make_batch(tok, model.config.vocab_size)
    algo = AlgoConfig(is_correction="none")
    t = time.perf_counter()
    for _ in range(2):
        policy_update(model, opt, sched, batch, algo, optim_cfg, max_tokens=64)
    secs = (time.perf_counter() - t) / 2
    peak = self_peak_rss_bytes()
    return {"model": model_name, "lora": lora, "params": params, "trainable": trainable, "base": base,
            "peak_delta": peak - base, "per_param": (peak - base) / params,
            "step_s": secs, "tokens": batch.num_completion_tokens}


def scaling(timeout: float) -> list[dict]:
    rows = []
    for name in SIZES:
        for lora in (False, True):
            cmd = [sys.executable, "-m", "bench.memory", "--worker", name] + (["--lora"] if lora else [])
            print(f"[{time.strftime('%H:%M:%S')}] train-step memory: {name} {'LoRA' if lora else 'full'}", flush=True)
            rc, out, err = run_group(cmd, timeout)
            lines = [x for x in out.splitlines() if x.startswith("{")]
            if rc != 0 or not lines:
                raise SystemExit(f"memory worker {name} lora={lora} failed ({'timeout' if rc is None else rc}):\n"
                                 f"{err[-2000:]}")
            rows.append(json.loads(lines[-1]))
    return rows


def extrapolate(rows: list[dict], demo: dict | None, ram: int) -> tuple[str, dict]:
    """Largest parameter count whose projected peak fits in `ram` (linear in parameters)."""
    out, lines = {}, []
    for lora in (False, True):
        (a, b) = [r for r in rows if r["lora"] == lora]
        slope = (b["peak_delta"] - a["peak_delta"]) / (b["params"] - a["params"])  # train bytes per param
        if demo is not None:  # anchor: the measured demo peak at the MoE's size (full FT)
            moe_full = next(r for r in rows if r["model"] == SIZES[1] and not r["lora"])
            anchor = demo["peak"] - moe_full["peak_delta"] + b["peak_delta"]
            engine_pp = max(demo["engine_delta"] - demo["kv_cache"], 0) / demo["params"]
            n0 = demo["params"]
        else:
            anchor, engine_pp, n0 = b["peak_delta"] + b["base"], 4.0, b["params"]
        per_param = slope + engine_pp
        n_max = n0 + (ram - anchor) / per_param
        key = "lora" if lora else "full"
        out[key] = {"train_bytes_per_param": slope, "engine_bytes_per_param": engine_pp, "anchor": anchor,
                    "n_max": n_max}
        lines.append([("LoRA r=16 (q,k,v,o)" if lora else "full fine-tuning"), f"{slope:.1f}", f"{engine_pp:.1f}",
                      f"{anchor / GIB:.2f} GiB at {n0 / 1e6:.0f}M", f"**~{n_max / 1e9:.2f}B**"])
    table = md_table(["mode", "train bytes/param (slope)", "vLLM engine bytes/param", "measured peak (anchor)",
                      f"largest model in {ram / GIB:.1f} GiB (extrapolated)"], lines)
    return table, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo-steps", type=int, default=3)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="extra demo config overrides, key=value")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--lora", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(train_step_memory(a.worker, a.lora)))
        return
    result: dict = {}
    ram = mem_total_bytes()
    demo = None
    if not a.skip_demo:
        demo = demo_memory(a.demo_steps, a.set)
        result["demo"] = {k: v for k, v in demo.items() if k != "run_dir"}
        order = ["load policy", "engine start", "eval", "eval/generate", "eval/reward", "generate", "reward", "train",
                 "sync", "checkpoint"]
        phases = sorted(demo["phases"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)
        rows = [[k, f"{v / GIB:.2f}"] for k, v in phases]
        print(f"\n## Peak RSS per phase: demo recipe, {demo['steps']} steps ({demo['seconds']:.0f} s), process tree\n")
        print(md_table(["phase", "peak RSS (GiB)"], rows))
        over = (demo["peak"] - DEMO_TARGET) / GIB
        verdict = "met" if over <= 0 else f"MISSED by {over:.2f} GiB"
        print(f"\nwhole run peak: {demo['peak'] / GIB:.2f} GiB process tree (trainer process alone, kernel "
              f"high-water mark: {demo['self_peak'] / GIB:.2f} GiB); target <= 12 GiB: {verdict}")
        print(f"vLLM engine start added {demo['engine_delta'] / GIB:.2f} GiB, of which the KV-cache reservation is "
              f"{demo['kv_cache'] / GIB:.2f} GiB; model {demo['params'] / 1e6:.0f}M params")
    if not a.skip_scaling:
        rows = scaling(1200)
        result["scaling"] = rows
        print("\n## One GRPO train step (policy_update, 32 completions <= 64 tokens, AdamW): memory per parameter\n")
        print(md_table(["model", "mode", "params", "trainable", "peak - pre-load RSS (GiB)", "bytes / param",
                        "s / step"],
                       [[r["model"], "LoRA" if r["lora"] else "full", f"{r['params'] / 1e6:.0f}M",
                         f"{r['trainable'] / 1e6:.1f}M", f"{r['peak_delta'] / GIB:.2f}",
                         f"{r['per_param']:.1f}", f"{r['step_s']:.1f}"] for r in rows]))
        table, ext = extrapolate(rows, demo, ram)
        result["largest"] = ext
        print(f"\n## Largest model that trains in this machine's {ram / GIB:.1f} GiB (EXTRAPOLATION, linear in "
              "parameters from the 2 sizes above, colocated vLLM engine included)\n")
        print(table)
        print("\nHow: projected peak(N) = measured peak at the anchor + (train slope + engine bytes/param) x "
              "(N - anchor params). Train slope: the difference of the two measured train steps over the difference "
              "of their parameter counts. Engine bytes/param: the vLLM engine's measured RSS minus its KV cache, over "
              "the demo model's parameters (it includes the engine's fixed runtime cost: conservative). Caveats: two "
              "points (a dense 135M and a 370M MoE) fix the slope; activation memory grows with hidden size and "
              "active parameters rather than total parameters, so the projection is rough; the same batch shape "
              "(32 completions <= 64 tokens) is assumed; nothing else may use the RAM.")
    emit_result("memory", result)


if __name__ == "__main__":
    main()
