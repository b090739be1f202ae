"""Learning, step-matched and over seeds: our loop vs TRL 1.16 `GRPOTrainer` at the same settings.

The settings, data and workers are bench/e2e_vs_trl.py's (smollm2-135m-moe, the demo's 1-2 digit
sums, 4 prompts x G=8, <= 64 tokens, lr 1e-5 constant, beta 0, loss "grpo"; ours with vLLM rollouts
and R3, TRL with its transformers generation). For every seed (train.seed of both runs: sampling
randomness; prompts and their order fixed), both sides save their weights after the same optimiser
steps (`--steps`, e.g. 2,4,6,8) and ours also after `--ours-extra` later steps (to time when ours
reaches TRL's final accuracy); each save records the loop seconds spent so far (the clock pauses
while saving). One evaluation process per seed scores the checkpoints (greedy pass@1 on
EVAL_SIZE held-out problems, grpo.evaluate.evaluate in one VLLMEngine; the base model once).

Reported: held-out pass@1 against step, mean ± standard error over seeds for both sides and their
difference; per seed the seconds each side needed, and the ratio of our time to TRL's time to reach
TRL's final accuracy (target: median <= 0.5); a PNG with both curves against step and against
wall-clock. Results accumulate in `--workdir`/results.json after each run, so an interrupted
invocation resumes where it stopped and `--report-only` reports what there is (`--fresh` starts over).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.learning_vs_trl --seeds 0,1,2,3,4 [--steps 2,4,6,8]
        [--ours-extra 12] [--workdir DIR] [--report-only] [--plot bench/learning_vs_trl.png]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from bench.common import REPO, emit_result, load_average
from bench.e2e_vs_trl import EVAL_SIZE, parse_steps, spawn


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"runs": {}, "evals": {}}


def _save(path: Path, res: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)


def run_seed(work: Path, res: dict, seed: int, steps: list[int], extra: list[int], model: str) -> None:
    """Train both sides for one seed (skipping what results.json already has), then evaluate."""
    plan = {"ours": steps + extra, "trl": steps}
    for side, save in plan.items():
        key = f"{side}-{seed}"
        if key in res["runs"]:
            continue
        out = work / key
        r, err = spawn(side, out, 3600, model=model, seed=seed, save_steps=",".join(map(str, save)))
        if r is None:
            raise SystemExit(f"{key} failed: {err} (log: {out})")
        res["runs"][key] = {"saved": r["saved"], "setup": r["setup"],
                            "train_reward": [s.get("mean_reward") for s in r["steps"]]}
        _save(work / "results.json", res)
    folders = {} if "base" in res["evals"] else {"base": None}
    for side in plan:
        for s in res["runs"][f"{side}-{seed}"]["saved"]:
            label = f"{side}-{seed}-{s['steps']}"
            if label not in res["evals"]:
                folders[label] = s["folder"]
    if folders:
        ev, err = spawn("eval", work / f"eval-{seed}", 3600, model=model, folders=json.dumps(folders))
        if ev is None:
            raise SystemExit(f"evaluation of seed {seed} failed: {err}")
        res["evals"].update(ev)
        _save(work / "results.json", res)
        for f in folders.values():  # checkpoints are 1.5 GB each; the scores are kept
            if f:
                for p in Path(f).glob("*.safetensors"):
                    p.unlink()


def mean_se(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else float("nan")
    return m, se


def curves(res: dict) -> dict:
    """{side: {step: {seed: (pass@1, elapsed)}}} from the saved runs and their evaluations."""
    out: dict = {"ours": {}, "trl": {}}
    for key, run in res["runs"].items():
        side, seed = key.rsplit("-", 1)
        for s in run["saved"]:
            e = res["evals"].get(f"{side}-{seed}-{s['steps']}")
            if e is not None:
                out[side].setdefault(s["steps"], {})[int(seed)] = (e["pass@1"], s["elapsed"])
    return out


def time_ratios(c: dict) -> dict[int, tuple[int, float | None]]:
    """Per seed: (TRL's last saved step, our loop seconds to first reach TRL's accuracy there /
    TRL's seconds to get there). None = ours did not reach it at any of its saved steps."""
    ratios = {}
    seeds = {s for d in c["trl"].values() for s in d}
    for seed in seeds:
        final = max(step for step, d in c["trl"].items() if seed in d)
        acc, t_trl = c["trl"][final][seed]
        ours = sorted((step, v[seed]) for step, v in c["ours"].items() if seed in v)
        reach = next((el for _, (a, el) in ours if a >= acc), None)
        ratios[seed] = (final, reach / t_trl if reach is not None else None)
    return ratios


def report(res: dict) -> dict:
    c = curves(res)
    base = res["evals"].get("base", {}).get("pass@1")
    print(f"\n## Held-out pass@1 against optimiser step (greedy, {EVAL_SIZE} problems; base model "
          f"{base if base is None else f'{base:.3f}'})\n")
    print("| step | seeds (ours / TRL) | ours mean ± s.e. | TRL mean ± s.e. | ours - TRL ± s.e. | "
          "ours loop s (mean) | TRL loop s (mean) |")
    print("|---|---|---|---|---|---|---|")
    table = []
    for step in sorted(set(c["ours"]) | set(c["trl"])):
        o, t = c["ours"].get(step, {}), c["trl"].get(step, {})
        row = {"step": step, "n_ours": len(o), "n_trl": len(t)}
        cells = [str(step), f"{len(o)} / {len(t)}"]
        for side, d in (("ours", o), ("trl", t)):
            if d:
                m, se = mean_se([v[0] for v in d.values()])
                row[side], row[f"{side}_se"] = m, se
                row[f"{side}_seconds"] = sum(v[1] for v in d.values()) / len(d)
                cells.append(f"{m:.3f} ± {se:.3f}")
            else:
                cells.append("-")
        if o and t:
            diff = row["ours"] - row["trl"]
            se = math.hypot(row["ours_se"], row["trl_se"])
            row["diff"], row["diff_se"] = diff, se
            cells.append(f"{diff:+.3f} ± {se:.3f}")
        else:
            cells.append("-")
        cells += [f"{row['ours_seconds']:.0f}" if o else "-", f"{row['trl_seconds']:.0f}" if t else "-"]
        print("| " + " | ".join(cells) + " |")
        table.append(row)
    print("\nper seed (pass@1 at each saved step; loop seconds in brackets):\n")
    seeds = sorted({s for side in c.values() for d in side.values() for s in d})
    for seed in seeds:
        for side in ("ours", "trl"):
            pts = [f"{step}: {d[seed][0]:.3f} ({d[seed][1]:.0f} s)" for step, d in sorted(c[side].items())
                   if seed in d]
            print(f"- seed {seed} {side:4s}  " + ", ".join(pts))
    ratios = time_ratios(c)
    known = sorted(r if r is not None else math.inf for _, r in ratios.values())
    median = statistics.median(known) if known else None
    print("\ntime for ours to reach TRL's final accuracy (its last saved step) / TRL's time, per seed: "
          + ", ".join(f"seed {s} (TRL step {f}): {'not reached' if r is None else f'{r:.2f}'}"
                      for s, (f, r) in sorted(ratios.items())))
    if median is not None:
        verdict = "met" if median <= 0.5 else "MISSED"
        shown = "not reached" if math.isinf(median) else f"{median:.2f}"
        print(f"median ratio {shown} (target <= 0.5: {verdict}; 'not reached' counts as infinite)")
    return {"table": table, "time_ratios": {str(k): {"trl_step": f, "ratio": r} for k, (f, r) in ratios.items()},
            "median_time_ratio": None if median is None or math.isinf(median) else median, "base": base,
            "seeds": seeds}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = curves(res)
    base = res["evals"].get("base", {}).get("pass@1")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for side, colour, name in (("ours", "tab:blue", "ours (vLLM rollouts, packed update)"),
                               ("trl", "tab:orange", "TRL 1.16 GRPOTrainer")):
        pts = sorted(c[side].items())
        if not pts:
            continue
        seeds = sorted({s for _, d in pts for s in d})
        for seed in seeds:  # faint: each seed against wall-clock and step
            xs = [(0, base)] if base is not None else []
            xs += [(d[seed][1], d[seed][0]) for _, d in pts if seed in d]
            a2.plot([x for x, _ in xs], [y for _, y in xs], color=colour, alpha=0.3, lw=1)
        steps = [0] + [s for s, _ in pts] if base is not None else [s for s, _ in pts]
        ms = [mean_se([v[0] for v in d.values()]) for _, d in pts]
        means = ([base] if base is not None else []) + [m for m, _ in ms]
        ses = ([0.0] if base is not None else []) + [0.0 if math.isnan(se) else se for _, se in ms]
        a1.errorbar(steps, means, yerr=ses, color=colour, marker="o", capsize=3, label=name)
        for (step, d), m in zip(pts, means[-len(pts):]):  # seeds behind each point
            a1.annotate(f"n={len(d)}", (step, m), textcoords="offset points", xytext=(4, -10), fontsize=7,
                        color=colour)
        a2.plot([], [], color=colour, label=name)
    a1.set(xlabel="optimiser step", ylabel=f"held-out pass@1 (greedy, {EVAL_SIZE} problems)",
           title="mean ± s.e. over seeds")
    a2.set(xlabel="loop seconds (set-up excluded)", ylabel="held-out pass@1", title="each seed")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-moe")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--steps", default="2,4,6,8", help="optimiser steps both sides save at")
    ap.add_argument("--ours-extra", default="12", help="later steps only ours saves at (time to TRL's final)")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "logs" / "learning_vs_trl"))
    ap.add_argument("--report-only", action="store_true", help="report what workdir/results.json holds")
    ap.add_argument("--fresh", action="store_true", help="discard workdir/results.json first (make bench)")
    ap.add_argument("--plot", default=str(REPO / "bench" / "learning_vs_trl.png"))
    a = ap.parse_args()
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if a.fresh and (work / "results.json").is_file():
        (work / "results.json").unlink()
    res = _load(work / "results.json")
    steps, extra = parse_steps(a.steps), parse_steps(a.ours_extra)
    t0 = time.perf_counter()
    if not a.report_only:
        for seed in parse_steps(a.seeds):
            print(f"[{time.strftime('%H:%M:%S')}] seed {seed} (load {load_average():.1f})", flush=True)
            run_seed(work, res, seed, steps, extra, a.model)
    summary = report(res)
    plot(res, Path(a.plot))
    print(f"\nthis invocation: {(time.perf_counter() - t0) / 60:.1f} min; results: {work / 'results.json'}")
    emit_result("learning_vs_trl", summary)


if __name__ == "__main__":
    main()
