"""One sandboxed execution, start to finish: judged function tests, or a stdin/stdout program."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass

from rewards.sandbox.judge import TIME_LIMIT
from rewards.sandbox.launcher import Launcher, Sink, SlotIdentity, pump

GRACE_S = 1.0  # the judge's own clock stops first and reports; the hard kill comes this much later
STDERR_CAP = 8 << 10


@dataclass
class TestOutcome:
    """Result of judged tests. status: ok | timeout | load_error | error (could not judge: see detail)."""

    passed: int
    total: int
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass
class ProgramOutcome:
    """Result of one stdin/stdout run. status: ok | timeout | output_limit | crashed."""

    stdout: str
    status: str
    returncode: int | None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class JudgeSpec:
    """What the judge runs. style: check (HumanEval `check(candidate)`), asserts (one test per string),
    script (one test: code that calls the candidate's functions by name)."""

    style: str
    tests: list[str]
    setup: str = ""  # trusted code run first in the judge (the dataset's prompt code, imports, helpers)
    entry_point: str | None = None


class _Results:
    """The judge's report lines; a line without the nonce means the channel was tampered with."""

    def __init__(self, nonce: str, total: int) -> None:
        self.nonce, self.total, self.pending = nonce, total, b""
        self.cases: dict[int, tuple[str, str]] = {}
        self.events: list[tuple[str, str]] = []
        self.done = self.started = False
        self.forged = ""

    def feed(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self._line(line)

    def _line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
            ok = type(msg) is list and len(msg) >= 2 and msg[0] == self.nonce
        except ValueError:
            ok = False
        if not ok:
            self.forged = self.forged or "a result line without the judge's nonce"
            return
        kind = msg[1]
        if kind == "started":
            self.started = True
        elif kind == "case" and len(msg) == 5 and type(msg[2]) is int and 0 <= msg[2] < self.total:
            self.cases[msg[2]] = (str(msg[3]), str(msg[4]))
        elif kind in ("load_error", "harness_error") and len(msg) == 3:
            self.events.append((kind, str(msg[2])))
        elif kind == "done":
            self.done = True


def run_judged(launcher: Launcher, cand: SlotIdentity, judge: SlotIdentity, code: str,
               spec: JudgeSpec) -> TestOutcome:
    t0 = time.monotonic()
    limits = launcher.limits
    total = len(spec.tests)
    judge_sock, cand_sock = socket.socketpair()
    res_r, res_w = os.pipe()
    nonce = secrets.token_hex(16)
    results = _Results(nonce, total)
    procs = []
    try:
        procs.append((launcher.spawn("candidate", cand, {"code": code}, {"sock": cand_sock.fileno()}), cand))
        payload = {"style": spec.style, "tests": spec.tests, "setup": spec.setup,
                   "entry_point": spec.entry_point, "nonce": nonce, "timeout_s": limits.timeout_s}
        jp = launcher.spawn("judge", judge, payload, {"sock": judge_sock.fileno(), "result": res_w},
                            stderr=subprocess.PIPE)
        procs.append((jp, judge))
    except BaseException:
        for proc, who in procs:
            launcher.kill(proc, who)
        os.close(res_r)
        raise
    finally:
        cand_sock.close()
        judge_sock.close()
        os.close(res_w)
    err = Sink(STDERR_CAP)
    try:
        finished = pump({res_r: results, jp.stderr.fileno(): err}, t0 + limits.timeout_s + GRACE_S,
                        stop=lambda: results.done)
    finally:
        for proc, who in procs:
            launcher.kill(proc, who)
        os.close(res_r)
    passed = sum(kind == "pass" for kind, _ in results.cases.values())
    took = time.monotonic() - t0
    if results.forged:
        return TestOutcome(0, total, "error", results.forged, took)
    if not results.started:
        if not finished:  # a machine too loaded to start the judge in time: a timeout, not a broken harness
            return TestOutcome(0, total, "timeout", f"the judge did not start within {limits.timeout_s:g} s", took)
        return TestOutcome(0, total, "error", "the judge did not start: " + err.text()[-2000:], took)
    for kind, detail in results.events:
        if kind == "harness_error":
            return TestOutcome(passed, total, "error", "the tests themselves failed to run: " + detail, took)
        if detail == TIME_LIMIT:  # still importing (or looping at import) when time ran out
            return TestOutcome(0, total, "timeout", f"time limit of {limits.timeout_s:g} s reached", took)
        return TestOutcome(0, total, "load_error", detail, took)
    harness = [d for kind, d in results.cases.values() if kind == "harness"]
    if harness:
        return TestOutcome(passed, total, "error", harness[0], took)
    fails = [d for kind, d in results.cases.values() if kind == "fail"]
    if not finished or TIME_LIMIT in fails:
        return TestOutcome(passed, total, "timeout", f"time limit of {limits.timeout_s:g} s reached", took)
    if results.done:
        return TestOutcome(passed, total, "ok", fails[0] if fails else "", took)
    return TestOutcome(passed, total, "ok", "the judge stopped early: " + (err.text()[-500:] or "killed"), took)


def run_program(launcher: Launcher, who: SlotIdentity, code: str, stdin: str) -> ProgramOutcome:
    t0 = time.monotonic()
    limits = launcher.limits
    proc = launcher.spawn("program", who, {"code": code, "stdin": stdin}, {},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Sink(limits.max_output_bytes), Sink(STDERR_CAP)
    deadline = t0 + limits.timeout_s
    try:
        finished = pump({proc.stdout.fileno(): out, proc.stderr.fileno(): err}, deadline,
                        stop=lambda: out.overflow)
        if finished and not out.overflow:
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
            except subprocess.TimeoutExpired:
                finished = False
    finally:
        launcher.kill(proc, who)
    took = time.monotonic() - t0
    if out.overflow:
        return ProgramOutcome("", "output_limit", None, f"more than {limits.max_output_bytes} bytes on stdout", took)
    if not finished:
        return ProgramOutcome(out.text(), "timeout", None, f"time limit of {limits.timeout_s:g} s reached", took)
    rc = proc.returncode
    status = "ok" if rc == 0 else "crashed"
    return ProgramOutcome(out.text(), status, rc, err.text()[-2000:] if rc else "", took)
