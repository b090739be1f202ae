"""The hostile-code suites' shared harness: the host the attacks aim at, how an attack is run and
what is checked on the host afterwards. Its fixtures (`host`, `monkeypatch_module`) are declared in
tests/conftest.py; the attack lists stay with their suites:

    tests/integration/test_sandbox_attacks.py   (66 attacks)
    tests/reliability/test_more_attacks.py      (more, for gaps in the first)

SAFETY: both suites run only under an outer guard (a pids cgroup with a numeric pids.max around
the test process: tests/guarded.sh, SECURITY.md); `skip_unless_guarded()` makes them skip without it.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from rewards.code_tests import CodeTests
from rewards.sandbox.cgroups import cgroup_dir

GOOD = "def solve(x=None):\n    return {token!r}\n"
GUARD_SKIP = "hostile-code tests run only under an outer guard (a pids cgroup with pids.max; see SECURITY.md)"


def under_pids_guard() -> bool:
    """A numeric pids.max on this process's pids cgroup or one of its ancestors."""
    node = cgroup_dir("pids")
    while node is not None and str(node).startswith("/sys/fs/cgroup/pids/"):
        f = node / "pids.max"
        if f.is_file() and f.read_text().strip().isdigit():
            return True
        node = node.parent
    return False


def skip_unless_guarded() -> None:
    """Module-level skip of a hostile-code suite outside the guard (an escape must not reach the machine)."""
    if not under_pids_guard():
        pytest.skip(GUARD_SKIP, allow_module_level=True)


@dataclass
class Host:
    """What the attacks aim at, and the evidence the tests read back."""

    token: str
    env_secret: str
    visible_dir: Path  # outside every hidden directory; files in it are root-only
    hidden_dir: Path  # the trainer's working directory: covered in the sandbox
    tcp_port: int
    udp_port: int
    abstract_name: str
    connections: list = field(default_factory=list)
    datagrams: list = field(default_factory=list)
    canaries: list = field(default_factory=list)  # processes running as the sandbox uids, outside

    def fmt(self) -> dict:
        return {"token": self.token, "visible": str(self.visible_dir), "hidden": str(self.hidden_dir),
                "tcp_port": self.tcp_port, "udp_port": self.udp_port, "abstract": self.abstract_name}


def _serve_tcp(sock: socket.socket, host: Host) -> None:
    while True:
        try:
            conn, addr = sock.accept()
        except OSError:
            return
        host.connections.append(addr)
        try:
            conn.sendall(host.token.encode())
        finally:
            conn.close()


def _serve_udp(sock: socket.socket, host: Host) -> None:
    while True:
        try:
            data, addr = sock.recvfrom(4096)
        except OSError:
            return
        host.datagrams.append(data)
        sock.sendto(host.token.encode(), addr)


def serve_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """The `host` fixture's body: secrets on disk and in the environment, listeners on 127.0.0.1."""
    token = secrets.token_hex(16)
    env_secret = "env-" + secrets.token_hex(16)
    monkeypatch.setenv("GRPO_SANDBOX_TEST_SECRET", env_secret)
    visible = Path(tempfile.mkdtemp(prefix="grpo-sandbox-test-", dir="/var/lib"))
    os.chmod(visible, 0o755)
    (visible / "secret.txt").write_text(token)
    os.chmod(visible / "secret.txt", 0o600)
    hidden = Path(tempfile.mkdtemp(prefix="grpo-sandbox-cwd-", dir="/var/lib"))
    os.chmod(hidden, 0o755)
    (hidden / "secret.txt").write_text(token)
    os.chmod(hidden / "secret.txt", 0o644)  # world-readable: only the covering tmpfs protects it
    monkeypatch.chdir(hidden)  # the sandbox hides the trainer's working directory
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    abstract = socket.socket(socket.AF_UNIX)
    abstract_name = "grpo-test-" + secrets.token_hex(6)
    abstract.bind("\0" + abstract_name)
    abstract.listen(4)
    h = Host(token, env_secret, visible, hidden, tcp.getsockname()[1], udp.getsockname()[1], abstract_name)
    for s, fn in ((tcp, _serve_tcp), (udp, _serve_udp), (abstract, _serve_tcp)):
        threading.Thread(target=fn, args=(s, h), daemon=True).start()
    yield h
    for s in (tcp, udp, abstract):
        s.close()
    shutil.rmtree(visible)
    shutil.rmtree(hidden)


def sandbox_processes(uids: list[int], exclude: set[int]) -> list[str]:
    """Processes of the sandbox uids on the host (none may survive a run), minus `exclude` (the canaries)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in exclude:
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uid_line.split()[1]) in uids:
            found.append(f"{d.name}: {(d / 'cmdline').read_bytes()[:80]!r}")
    return found


@dataclass
class Attack:
    name: str
    code: str
    tests: list[str] = field(default_factory=lambda: ["assert solve() == {token!r}"])
    style: str = "asserts"  # asserts | check | stdio
    statuses: tuple[str, ...] = ()  # the status the run must end with, when it matters
    evidence: Callable[[Host], None] | None = None


def secret_map(host: Host) -> dict:
    shadow = hashlib.sha256(Path("/etc/shadow").read_text().encode()).hexdigest()
    return {**host.fmt(), "env_secret": host.env_secret, "shadow": shadow}


def run_attack(reward: CodeTests, host: Host, attack: Attack) -> tuple[float, str, str]:
    fill = secret_map(host)
    code = attack.code.format(**fill)
    if attack.style == "stdio":
        res = reward([""], [code], inputs=[["1"]], outputs=[[host.token]])
    elif attack.style == "check":
        res = reward([""], [code], test=[attack.tests[0].format(**fill)], entry_point=["solve"],
                     prompt_code=["def helper(x):\n    return x\n"])
    else:
        res = reward([""], [code], test_list=[[t.format(**fill) for t in attack.tests]])
    return res[0], res.status[0], res.details.get(0, "")
