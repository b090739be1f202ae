"""Helpers shared by the benchmarks: peak-memory sampling, machine facts, result lines.

Every bench prints human-readable markdown tables, and ends with one machine-readable
line `BENCH_RESULT {json}` that `bench.run_all` collects (see `emit_result`).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

GIB = 1024**3
REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCH_RESULT "


def tree_rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process plus all its descendants (reward workers, sandboxes, engines).

    The toolkit's child processes are fresh interpreters (not forks of the trainer), so they
    share almost no pages with it and the sum does not double-count.
    """
    return int(_sum_over_tree(pid, lambda p: p.memory_info().rss))


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live descendants (steadier than wall time
    when other jobs share the cores; busy-waiting thread pools still inflate it)."""
    return float(_sum_over_tree(pid, lambda p: sum(p.cpu_times()[:2])))  # user + system


def _sum_over_tree(pid: int | None, measure) -> float:
    """measure(process) summed over a process and its live descendants (ones that vanish are skipped)."""
    import psutil

    try:
        proc = psutil.Process(pid or os.getpid())
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += measure(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def reset_peak_rss() -> None:
    """Restart this process's RSS high-water mark from its current RSS (Linux: clear_refs 5).

    Needed in a worker started by a big process: ru_maxrss survives fork + execve, so a fresh
    worker of a 10 GiB parent would otherwise report 10 GiB whatever it does."""
    Path("/proc/self/clear_refs").write_text("5")


def self_peak_rss_bytes() -> int:
    """The kernel's own high-water mark of this process's RSS (VmHWM: exact, not sampled)."""
    from grpo.metrics import process_memory  # the trainer logs the same figure per step

    peak = process_memory().get("memory/peak_rss_gib")
    return int(peak * GIB) if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssMonitor:
    """Samples the process-tree RSS in a background thread; keeps the peak overall and per phase.

        mon = RssMonitor().start()
        with mon.phase("generate"): ...
        mon.stop(); mon.peaks   # {"generate": bytes, ...}; mon.peak: overall

    Sampling (every `interval` s) can miss a spike shorter than the interval; the process's own
    kernel high-water mark (`self_peak_rss_bytes`) is exact and is reported alongside.
    """

    def __init__(self, interval: float = 0.05, pid: int | None = None, base: str = "idle"):
        self.interval, self.pid, self.base = interval, pid, base
        self.peak = 0
        self.peaks: dict[str, int] = {}
        self.current = base  # the phase outside every `phase()` block
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssMonitor:
        self._thread.start()
        return self

    def sample(self) -> int:
        rss = tree_rss_bytes(self.pid)
        self.peak = max(self.peak, rss)
        self.peaks[self.current] = max(self.peaks.get(self.current, 0), rss)
        return rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    @contextmanager
    def phase(self, name: str):
        prev = self.current
        self.sample()  # close the previous phase with a fresh reading
        self.current = name
        try:
            yield
        finally:
            self.sample()
            self.current = prev

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def run_group(cmd: list[str], timeout: float, **kw) -> tuple[int | None, str, str]:
    """Run `cmd` in its own process group; on timeout kill the whole group (workers, engines too).

    Returns (exit code or None on timeout, stdout, stderr); stdout/stderr are "" when redirected
    by the caller (`stdout=` / `stderr=` in kw)."""
    import signal

    capture = "stdout" not in kw
    p = subprocess.Popen(cmd, start_new_session=True, text=True,
                         **({"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} if capture else {}), **kw)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out or "", err or ""
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return None, out or "", err or ""


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(x) -> str:
        return f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines)


def emit_result(name: str, data: dict) -> None:
    """One machine-readable line for bench.run_all (after the human-readable tables)."""
    print(RESULT_PREFIX + json.dumps({"bench": name, **data}, default=float), flush=True)


def parse_results(text: str) -> list[dict]:
    return [json.loads(line[len(RESULT_PREFIX):]) for line in text.splitlines() if line.startswith(RESULT_PREFIX)]


def machine_info() -> dict:
    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        flags = fields.get("Flags", "")
        isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags.split()]
    except (OSError, subprocess.SubprocessError):
        isa = []
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    return {"cpu": model, "cores": os.cpu_count(), "ram_bytes": mem, "isa": isa,
            "python": platform.python_version(), "kernel": platform.release()}


def mem_total_bytes() -> int:
    return machine_info()["ram_bytes"]


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + (" (working tree has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> float:
    return os.getloadavg()[0]


class Stopwatch:
    """Accumulates named durations: `with sw("generate"): ...`; `sw.totals`."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t
