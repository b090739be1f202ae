"""Adversarial suite: code that attacks the sandbox or the reward itself.

Each attack must (1) score 0, (2) leave evidence of containment on the host
(no surviving process of a sandbox uid, the canary not written, the listener
not connected, the canary process alive...), and (3) leave the pool working:
a correct solution scores 1.0 right after.

The tests are written so that success of an attack would show: a test's
expected value is something the candidate could only return if the attack
worked (the parent's secret, the host's /etc/shadow, a token the host
listener sends on connection), or a random token it cannot know at all (the
reward-forgery attacks).

SAFETY: these run only under an outer guard (a pids cgroup with a numeric pids.max around
the test process: tests/guarded.sh, SECURITY.md); without it they skip. The harness (host,
run_attack) is tests/attack_harness.py.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from rewards.code_tests import CodeTests
from tests.attack_harness import GOOD, Attack, Host, run_attack, sandbox_processes, skip_unless_guarded

pytestmark = pytest.mark.integration
skip_unless_guarded()

TIMEOUT_S = 4.0  # wall clock per sample: a judge must start in time on a loaded 2-core machine


@pytest.fixture(scope="module", params=["unshare", "bwrap"])
def reward(host, request):
    """The reward under attack, once per sandbox backend (bwrap: when installed)."""
    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    ct = CodeTests(timeout_s=TIMEOUT_S, memory_mb=256, max_processes=16, num_workers=1, backend=request.param,
                   limits={"max_file_mb": 4, "tmpfs_mb": 16, "max_output_bytes": 1 << 16})
    for uid in ct.sandbox.uids:  # processes of the sandbox uids on the host: kill(-1) must not reach them
        host.canaries.append(subprocess.Popen(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"]))
    yield ct
    for p in host.canaries:
        p.kill()
        p.wait()
    host.canaries.clear()  # the next backend's canaries are checked afresh
    ct.close()


def no_connection(h: Host) -> None:
    assert h.connections == [], f"the host listener was reached: {h.connections}"
    assert h.datagrams == [], f"the host UDP socket got {h.datagrams}"


def host_path_untouched(*names: str) -> Callable[[Host], None]:
    def check(h: Host) -> None:
        for name in names:
            for root in ("/tmp", "/var/tmp", "/dev/shm", "/", "/etc", str(h.visible_dir), str(h.hidden_dir)):
                assert not Path(root, name).exists(), f"{root}/{name} was written on the host"
    return check


def assert_not_in_file(path: str, text: str) -> None:
    assert text not in Path(path).read_text(), f"{path} was modified on the host"


FORK_BOMB = """
import os
def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""

ATTACKS = [
    # ---------------------------------------------------------------- resource exhaustion
    Attack("infinite_loop", "def solve():\n    while True:\n        pass\n", statuses=("timeout",)),
    Attack("infinite_loop_at_import", "while True:\n    pass\ndef solve():\n    return 1\n", statuses=("timeout",)),
    Attack("sleep_forever", "import time\ndef solve():\n    time.sleep(10**6)\n", statuses=("timeout",)),
    Attack("fork_bomb_at_import", FORK_BOMB + "bomb()\n"),
    Attack("fork_bomb_in_call", FORK_BOMB + "def solve():\n    bomb()\n"),
    Attack("thread_bomb", "import threading, time\ndef solve():\n    while True:\n"
                          "        threading.Thread(target=time.sleep, args=(100,)).start()\n"),
    Attack("memory_bomb", "def solve():\n    a = []\n    while True:\n        a.append(bytearray(10**7))\n"),
    Attack("memory_bomb_one_shot", "def solve():\n    return len(bytearray(10**10))\n"),
    Attack("memory_bomb_across_processes",  # each child stays under RLIMIT_AS; the cgroup caps the sum
           "import os, time\ndef solve():\n    for _ in range(8):\n        if os.fork() == 0:\n"
           "            b = bytearray(200 * 10**6)\n            b[::4096] = b'x' * len(b[::4096])\n"
           "            time.sleep(100)\n    time.sleep(100)\n"),
    Attack("disk_fill_tmp", "def solve():\n    with open('/tmp/fill', 'wb') as f:\n        while True:\n"
                            "            f.write(b'x' * 10**6)\n", evidence=host_path_untouched("fill")),
    Attack("disk_fill_workdir", "def solve():\n    with open('big', 'wb') as f:\n        while True:\n"
                                "            f.write(b'x' * 10**6)\n"),
    Attack("inode_exhaustion", "import os\ndef solve():\n    i = 0\n    while True:\n"
                               "        open(f'/tmp/f{{i}}', 'w').close()\n        i += 1\n"),
    Attack("fd_exhaustion", "def solve():\n    fs = []\n    while True:\n        fs.append(open('/dev/null'))\n"),
    Attack("fd_count_reaches_10k", "def solve():\n    fs = []\n    try:\n        while len(fs) < 10**4:\n"
                                   "            fs.append(open('/dev/null'))\n    except OSError:\n        pass\n"
                                   "    return {token!r} if len(fs) >= 10**4 else len(fs)\n"),
    Attack("huge_stdout_function", "import sys\ndef solve():\n    while True:\n        sys.stdout.write('x' * 10**6)\n",
           statuses=("timeout",)),
    Attack("huge_stdout_program", "import sys\nwhile True:\n    sys.stdout.write('x' * 10**6)\n",
           style="stdio", statuses=("output_limit",)),
    Attack("deep_recursion_segfault", "import sys\nsys.setrecursionlimit(10**8)\n"
                                      "def solve(n=0):\n    return solve(n + 1)\n"),
    Attack("cpu_burners_in_children", "import os\ndef solve():\n    for _ in range(4):\n        if os.fork() == 0:\n"
                                      "            while True: pass\n    while True: pass\n",
           statuses=("timeout",)),
    # ---------------------------------------------------------------- files
    Attack("read_etc_shadow", "def solve():\n    return open('/etc/shadow').read()\n",
           tests=["import hashlib\nassert hashlib.sha256(solve().encode()).hexdigest() == {shadow!r}"]),
    Attack("read_root_only_secret", "def solve():\n    return open({visible!r} + '/secret.txt').read()\n"),
    Attack("read_secret_in_trainer_cwd", "def solve():\n    return open({hidden!r} + '/secret.txt').read()\n"),
    Attack("search_filesystem_for_token",
           "import os\ndef solve():\n    for root in ('/var/lib', '/root', '/home', '/tmp', '/work', '/etc'):\n"
           "        for d, _, files in os.walk(root):\n            for f in files:\n                try:\n"
           "                    t = open(os.path.join(d, f), errors='ignore').read(64)\n"
           "                except OSError:\n                    continue\n"
           "                if len(t) == 32 and t.isalnum():\n                    return t\n"),
    Attack("write_outside", "import os\ndef solve():\n    for d in ('/tmp', '/var/tmp', '/dev/shm', '/', '/etc', {visible!r}, "
                            "{hidden!r}):\n        try:\n            open(os.path.join(d, 'grpo_canary'), 'w').write('x')\n"
                            "        except OSError:\n            pass\n",
           evidence=host_path_untouched("grpo_canary")),
    Attack("symlink_out_of_workdir", "import os\ndef solve():\n    os.symlink('/etc/passwd', 'p')\n"
                                     "    open('p', 'a').write('grpo_evil::0:0::/:/bin/sh\\n')\n",
           evidence=lambda h: assert_not_in_file("/etc/passwd", "grpo_evil")),
    Attack("setuid_binary_to_root", "import subprocess\ndef solve():\n    for cmd in (['su', '-c', 'id -u'], "
                                    "['sudo', '-n', 'id', '-u'], ['mount', '-t', 'tmpfs', 'x', '/mnt']):\n"
                                    "        try:\n            out = subprocess.run(cmd, capture_output=True, "
                                    "text=True, timeout=1).stdout.strip()\n        except Exception:\n"
                                    "            continue\n        if out == '0':\n            return {token!r}\n"),
    Attack("setuid_zero", "import os\ndef solve():\n    os.setuid(0)\n    return {token!r}\n"),
    Attack("user_namespace_root", "import ctypes\ndef solve():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
                                  "    libc.unshare(0x10000000)  # CLONE_NEWUSER: 'root' in a namespace of its own\n"
                                  "    return open('/etc/shadow').read()\n",
           tests=["import hashlib\nassert hashlib.sha256(solve().encode()).hexdigest() == {shadow!r}"]),
    # ---------------------------------------------------------------- network
    Attack("tcp_to_host_listener", "import socket\ndef solve():\n"
                                   "    s = socket.create_connection(('127.0.0.1', {tcp_port}), timeout=1)\n"
                                   "    return s.recv(64).decode()\n", evidence=no_connection),
    Attack("udp_to_host", "import socket\ndef solve():\n    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                          "    s.settimeout(1)\n    s.sendto(b'hi', ('127.0.0.1', {udp_port}))\n"
                          "    return s.recv(64).decode()\n", evidence=no_connection),
    Attack("dns_query_to_host_resolver", "import socket, struct\ndef solve():\n"
                                         "    q = struct.pack('>HHHHHH', 1, 256, 1, 0, 0, 0) + b'\\x04pypi\\x03org\\x00\\x00\\x01\\x00\\x01'\n"
                                         "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    s.settimeout(1)\n"
                                         "    s.sendto(q, ('127.0.0.1', {udp_port}))\n    return s.recv(512).decode()\n",
           evidence=no_connection),
    Attack("dns_lookup", "import socket\ndef solve():\n    socket.getaddrinfo('pypi.org', 443)\n    return {token!r}\n"),
    Attack("bring_up_loopback", "import subprocess, socket\ndef solve():\n"
                                "    subprocess.run(['ip', 'link', 'set', 'lo', 'up'], capture_output=True)\n"
                                "    return socket.create_connection(('127.0.0.1', {tcp_port}), timeout=1).recv(64).decode()\n",
           evidence=no_connection),
    Attack("abstract_unix_socket", "import socket\ndef solve():\n    s = socket.socket(socket.AF_UNIX)\n"
                                   "    s.connect('\\0' + {abstract!r})\n    return s.recv(64).decode()\n",
           evidence=no_connection),
    Attack("external_tcp", "import socket\ndef solve():\n    socket.create_connection(('1.1.1.1', 443), timeout=1)\n"
                           "    return {token!r}\n"),
    # ---------------------------------------------------------------- processes and signals
    Attack("kill_parent", "import os, signal\ndef solve():\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                          "    return 0\n"),
    Attack("kill_everything", "import os, signal\ndef solve():\n    os.kill(-1, signal.SIGKILL)\n    return 0\n"),
    Attack("kill_pid_scan", "import os, signal\ndef solve():\n    for pid in range(2, 40000):\n        try:\n"
                            "            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n"
                            "    return len(os.listdir('/proc'))\n"),
    Attack("find_and_kill_the_judge", "import os, signal\ndef solve():\n    for p in os.listdir('/proc'):\n"
                                      "        if p.isdigit() and int(p) != os.getpid():\n"
                                      "            try:\n                os.kill(int(p), signal.SIGKILL)\n"
                                      "            except OSError:\n                pass\n    return 0\n"),
    Attack("daemon_double_fork", "import os, time\ndef solve():\n    if os.fork() == 0:\n        os.setsid()\n"
                                 "        if os.fork() == 0:\n            time.sleep(600)\n        os._exit(0)\n"
                                 "    return 0\n"),
    Attack("daemon_via_subprocess", "import subprocess\ndef solve():\n"
                                    "    subprocess.Popen(['sleep', '600'], start_new_session=True)\n    return 0\n"),
    Attack("ignore_signals_and_spin", "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, "
                                      "signal.SIGHUP, signal.SIGXCPU):\n    signal.signal(s, signal.SIG_IGN)\n"
                                      "def solve():\n    while True:\n        pass\n", statuses=("timeout",)),
    Attack("stop_self", "import os, signal\ndef solve():\n    os.kill(os.getpid(), signal.SIGSTOP)\n    return 0\n"),
    Attack("ptrace_parent", "import ctypes, os\ndef solve():\n    libc = ctypes.CDLL(None, use_errno=True)\n"
                            "    if libc.ptrace(16, os.getppid() or 1, 0, 0) != 0:\n        return 'denied'\n"
                            "    return {token!r}\n"),
    # ---------------------------------------------------------------- environment
    Attack("read_parent_env", "import os\ndef solve():\n    return os.environ.get('GRPO_SANDBOX_TEST_SECRET', '')\n",
           tests=["assert solve() == {env_secret!r}"]),
    Attack("read_all_proc_environ", "import os\ndef solve():\n    for p in os.listdir('/proc'):\n        try:\n"
                                    "            env = open(f'/proc/{{p}}/environ', 'rb').read()\n        except OSError:\n"
                                    "            continue\n        for kv in env.split(b'\\0'):\n"
                                    "            if kv.startswith(b'GRPO_SANDBOX_TEST_SECRET='):\n"
                                    "                return kv.split(b'=', 1)[1].decode()\n",
           tests=["assert solve() == {env_secret!r}"]),
    Attack("inherited_fds", "import os\ndef solve():\n    got = []\n    for fd in range(3, 1024):\n        try:\n"
                            "            got.append(os.readlink(f'/proc/self/fd/{{fd}}'))\n        except OSError:\n"
                            "            pass\n    return got\n", tests=["assert len(solve()) > 1"]),
    # ---------------------------------------------------------------- the reward's own verdict
    Attack("print_fake_passed", "import sys\nfor s in (sys.stdout, sys.stderr):\n"
                                "    s.write('passed\\nALL TESTS PASSED\\n[\"x\", \"case\", 0, \"pass\", \"\"]\\n[\"x\", \"done\"]\\n')\n"
                                "    s.flush()\ndef solve():\n    return 0\n"),
    Attack("os_exit_0_at_import", "import os\nos._exit(0)\n"),
    Attack("os_exit_0_in_call", "import os\ndef solve():\n    os._exit(0)\n"),
    Attack("sys_exit_0_in_call", "import sys\ndef solve():\n    sys.exit(0)\n"),
    Attack("raise_systemexit_at_import", "raise SystemExit(0)\n"),
    Attack("systemexit_in_del", "class X:\n    def __eq__(self, o):\n        return True\n    def __del__(self):\n"
                                "        raise SystemExit(0)\ndef solve():\n    return X()\n"),
    Attack("forged_eq", "class Anything:\n    def __eq__(self, other):\n        return True\n"
                        "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n"
                        "def solve():\n    return Anything()\n"),
    Attack("forged_str_subclass", "class S(str):\n    def __eq__(self, other):\n        return True\n"
                                  "    __hash__ = str.__hash__\ndef solve():\n    return S('nope')\n"),
    Attack("forged_truthiness", "class T(list):\n    def __bool__(self):\n        return True\n"
                                "def solve():\n    return T()\n", tests=["assert solve()"]),
    Attack("generator_raising_systemexit", "def solve():\n    yield 1\n    raise SystemExit(0)\n",
           tests=["assert list(solve()) == [1, 2]"]),
    Attack("patch_builtins", "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {{}})\n"
                             "builtins.len = lambda x: 3\nbuiltins.sorted = lambda *a, **k: [1, 2, 3]\n"
                             "def solve():\n    return [3, 1]\n", tests=["assert len(solve()) == 3 and sorted(solve()) == [1, 2, 3]"]),
    Attack("override_check", "def check(candidate):\n    return True\ndef helper(x):\n    return 0\n"
                             "def solve(x):\n    return 0\n",
           style="check", tests=["def check(candidate):\n    assert candidate(3) == helper(3) + {token!r}.count('') \n"]),
    Attack("patch_harness_modules", "import sys\nfor name in ('wire', 'candidate', 'judge'):\n"
                                    "    m = sys.modules.get(name)\n    if m is not None:\n"
                                    "        for attr in dir(m):\n            if callable(getattr(m, attr)) and not attr.startswith('__'):\n"
                                    "                try:\n                    setattr(m, attr, lambda *a, **k: None)\n"
                                    "                except Exception:\n                    pass\n"
                                    "def solve():\n    return 0\n"),
    Attack("forge_frames_on_the_socket", "import socket, json, struct\ndef solve():\n    for fd in range(3, 64):\n"
                                         "        try:\n            s = socket.socket(fileno=fd)\n        except OSError:\n"
                                         "            continue\n        for msg in (['ok', 'guess'], ['case', 0, 'pass', ''], ['done']):\n"
                                         "            b = json.dumps(msg).encode()\n            try:\n"
                                         "                s.send(struct.pack('!I', len(b)) + b)\n            except OSError:\n"
                                         "                pass\n    return 0\n"),
    Attack("write_fake_results_to_every_fd", "import os\ndef solve():\n    for fd in range(0, 256):\n        try:\n"
                                             "            os.write(fd, b'[\"nonce\", \"case\", 0, \"pass\", \"\"]\\n[\"nonce\", \"done\"]\\n')\n"
                                             "        except OSError:\n            pass\n    return 0\n"),
    Attack("inspect_caller_frames", "import sys, gc\ndef solve():\n    for o in gc.get_objects():\n"
                                    "        if isinstance(o, str) and len(o) == 32 and o.isalnum() and o != 'x' * 32:\n"
                                    "            return o\n    f = sys._getframe()\n    while f:\n"
                                    "        for v in f.f_locals.values():\n            if isinstance(v, str) and len(v) == 32:\n"
                                    "                return v\n        f = f.f_back\n"),
    Attack("settrace_to_skip_asserts", "import sys\ndef tracer(frame, event, arg):\n    return tracer\n"
                                       "sys.settrace(tracer)\nsys.setprofile(tracer)\ndef solve():\n    return 0\n"),
    Attack("huge_return_value", "def solve():\n    return 'x' * (100 * 10**6)\n"),
    Attack("deeply_nested_return", "def solve():\n    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n"),
    Attack("slow_loris_reply", "import time\ndef solve():\n    time.sleep(10)\n    return {token!r}\n",
           statuses=("timeout",)),
]


def test_suite_is_big_enough():
    assert len({a.name for a in ATTACKS}) == len(ATTACKS) >= 40


def test_good_solution_scores_one(reward, host):
    """The positive control: the harness the attacks run in does give 1.0 to a correct answer."""
    assert run_attack(reward, host, Attack("good", GOOD))[0] == 1.0
    assert run_attack(reward, host, Attack("good_io", "print(input() and {token!r})", style="stdio"))[0] == 1.0
    check = "def check(candidate):\n    assert candidate(3) == helper(3) + {token!r}.count('') \n"
    ok = "def solve(x):\n    return x + len({token!r}) + 1\n"
    assert run_attack(reward, host, Attack("good_check", ok, style="check", tests=[check]))[0] == 1.0


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_contained(reward, host, attack):
    before = len(list(Path("/proc").iterdir()))
    t0 = time.monotonic()
    score, status, detail = run_attack(reward, host, attack)
    took = time.monotonic() - t0
    assert score == 0.0, f"{attack.name} scored {score} ({status}: {detail})"
    assert status != "error", f"{attack.name} broke the harness: {detail}"
    if attack.statuses:
        assert status in attack.statuses, f"{attack.name}: status {status!r} ({detail})"
    assert took < TIMEOUT_S + 5, f"{attack.name} held the pool for {took:.1f} s"
    if attack.evidence:
        attack.evidence(host)
    # nothing of the sandbox survives on the host; the canaries (same uids, outside) are untouched
    canary_pids = {p.pid for p in host.canaries}
    assert sandbox_processes(reward.sandbox.uids, exclude=canary_pids) == []
    assert all(p.poll() is None for p in host.canaries), "a process outside the sandbox was killed"
    assert len(list(Path("/proc").iterdir())) < before + 20
    # the pool still works
    assert run_attack(reward, host, Attack("good", GOOD))[0] == 1.0


def _status_kib(field: str) -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1])


def test_parent_memory_unaffected_by_output_floods(reward, host):
    # The peak of this process is reset first (clear_refs 5 resets VmHWM): an earlier test in the
    # same session (a vLLM engine) may have peaked far higher, and only the flood's growth matters.
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kib("VmRSS")
    run_attack(reward, host, ATTACKS[[a.name for a in ATTACKS].index("huge_stdout_program")])
    grew = _status_kib("VmHWM") - base
    assert grew < 256 * 1024, f"the reward's process grew by {grew / 1024:.0f} MiB reading a flood of output"


def test_sandbox_kills_on_timeout_even_for_a_stopped_process_tree(reward, host):
    code = ("import os, signal\ndef solve():\n    if os.fork() == 0:\n        os.kill(os.getpid(), signal.SIGSTOP)\n"
            "    while True:\n        pass\n")
    assert run_attack(reward, host, Attack("stopped_child", code))[:2] == (0.0, "timeout")
    assert sandbox_processes(reward.sandbox.uids, exclude={p.pid for p in host.canaries}) == []


def test_signals_to_the_trainer_are_impossible(reward, host):
    """killpg(0) / kill(-pgid): a process in the trainer's own process group must survive."""
    sibling = subprocess.Popen(["sleep", "60"])  # same process group and session as this test
    try:
        code = ("import os, signal\ndef solve():\n    for target in (0, os.getpgrp(), 1):\n        try:\n"
                "            os.killpg(target, signal.SIGKILL)\n        except OSError:\n            pass\n    return 0\n")
        assert run_attack(reward, host, Attack("killpg", code))[0] == 0.0
        assert sibling.poll() is None, "a process in the trainer's process group was killed"
    finally:
        sibling.kill()
        sibling.wait()
