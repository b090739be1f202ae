"""More hostile code, for gaps in tests/integration/test_sandbox_attacks.py (66 attacks there).

Same harness and the same proof per attack (that module's `test_attack_is_contained` logic):
score 0, the harness not broken, no sandbox process left on the host, the same-uid canaries
alive, the pool still scores a correct answer 1.0, plus the attack's own evidence. New here:
kernel/cgroup knobs (cgroup.procs, release_agent, sysctl, sysrq, oom_score_adj, rlimits,
nice), persistence (sitecustomize in the import path, files left for the next sample),
stderr flood, frame-header lies, abort, closing every fd, a pickle payload in an exception,
a million-digit int.

Knobs that would change the host if the write succeeded are written with the value they
already hold (or a harmless one, sysrq 'h' = print help), so even a sandbox failure leaves
the machine as it was; the score still shows whether the write went through.

SAFETY: these run only under an outer guard (a pids cgroup with a numeric pids.max around
the test process, SECURITY.md); without it they skip.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from rewards.code_tests import CodeTests
from tests.attack_harness import GOOD, Attack, Host, run_attack, sandbox_processes, skip_unless_guarded

pytestmark = pytest.mark.integration
skip_unless_guarded()
REPO = Path(__file__).parents[2]

TIMEOUT_S = 4.0  # the suite's 2 s is too tight for a judge to start on a loaded 2-core machine


@pytest.fixture(scope="module", params=["unshare", "bwrap"])
def reward(host, request):
    """The suite's `reward` fixture (same limits) with a longer time limit; canaries are
    started per backend and dropped from the host's list when that backend is done."""
    import shutil
    import subprocess

    if shutil.which(request.param) is None:
        pytest.skip(f"{request.param} is not installed")
    ct = CodeTests(timeout_s=TIMEOUT_S, memory_mb=256, max_processes=16, num_workers=1, backend=request.param,
                   limits={"max_file_mb": 4, "tmpfs_mb": 16, "max_output_bytes": 1 << 16})
    mine = [subprocess.Popen(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sleep", "600"])
            for uid in ct.sandbox.uids]
    host.canaries[:] = mine
    yield ct
    for p in mine:
        p.kill()
        p.wait()
    host.canaries[:] = []
    ct.close()


def _hashes(paths) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


GUARDED_FILES = sorted((REPO / "rewards" / "sandbox").glob("*.py"))
BEFORE = _hashes(GUARDED_FILES)


def nothing_persisted(h: Host) -> None:
    import site
    import sys

    for d in {*sys.path, *site.getsitepackages(), str(REPO), str(REPO / "rewards" / "sandbox")}:
        for name in ("sitecustomize.py", "usercustomize.py", "grpo_persist.pth"):
            assert not Path(d, name).exists(), f"{d}/{name} was written on the host"
    assert _hashes(GUARDED_FILES) == BEFORE, "the sandbox's own modules were modified"


def host_tmp_clean(h: Host) -> None:
    import glob

    for pattern in ("/tmp/grpo_poison*", "/dev/shm/grpo_poison*", "/var/tmp/grpo_poison*", "/run/grpo_poison*",
                    "/tmp/grpo_pwned*"):
        assert not glob.glob(pattern), f"{pattern} exists on the host"


WRITE_SAME_VALUE = """
import glob
def write_same(path):
    try:
        old = open(path).read()
        with open(path, 'w') as f:
            f.write(old if old.strip() else '0')
        return True
    except OSError:
        return False
"""

MORE_ATTACKS = [
    # ---------------------------------------------------------------- resources
    Attack("stderr_flood", "import sys\ndef solve():\n    while True:\n        sys.stderr.write('x' * 10**6)\n"),
    Attack("stderr_flood_program", "import sys\nwhile True:\n    sys.stderr.write('e' * 10**6)\n", style="stdio"),
    Attack("oom_score_adj_lowered", "def solve():\n    with open('/proc/self/oom_score_adj', 'w') as f:\n"
                                    "        f.write('-1000')\n    return {token!r}\n"),
    Attack("raise_rlimits", "import resource\ndef solve():\n    for r in (resource.RLIMIT_NPROC, resource.RLIMIT_AS, "
                            "resource.RLIMIT_CPU, resource.RLIMIT_FSIZE, resource.RLIMIT_NOFILE):\n"
                            "        try:\n            resource.setrlimit(r, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
                            "            return {token!r}\n        except (ValueError, OSError):\n            pass\n"),
    Attack("negative_nice", "import os\ndef solve():\n    try:\n        os.nice(-10)\n        return {token!r}\n"
                            "    except OSError:\n        pass\n    try:\n        os.setpriority(os.PRIO_PROCESS, 1, -20)\n"
                            "        return {token!r}\n    except OSError:\n        return 0\n"),
    # ---------------------------------------------------------------- kernel and cgroup knobs
    Attack("cgroup_procs_escape", "import glob, os\ndef solve():\n"
                                  "    for p in glob.glob('/sys/fs/cgroup/*/cgroup.procs') + glob.glob('/sys/fs/cgroup/cgroup.procs'):\n"
                                  "        try:\n            open(p, 'w').write(str(os.getpid()))\n"
                                  "            return {token!r}\n        except OSError:\n            pass\n"),
    Attack("cgroup_release_agent", WRITE_SAME_VALUE + "def solve():\n"
           "    for p in glob.glob('/sys/fs/cgroup/*/release_agent') + glob.glob('/sys/fs/cgroup/*/notify_on_release'):\n"
           "        if write_same(p):\n            return {token!r}\n"),
    Attack("sysctl_write", WRITE_SAME_VALUE + "def solve():\n"
           "    for p in ('/proc/sys/kernel/core_pattern', '/proc/sys/kernel/hostname', '/proc/sys/vm/overcommit_memory',"
           " '/proc/sys/kernel/pid_max', '/proc/sys/fs/file-max'):\n        if write_same(p):\n            return {token!r}\n"),
    Attack("sysrq_trigger", "def solve():\n    try:\n        open('/proc/sysrq-trigger', 'w').write('h')\n"
                            "        return {token!r}\n    except OSError:\n        return 0\n"),
    # ---------------------------------------------------------------- persistence
    Attack("persist_in_import_path", "import os, sys, site\ndef solve():\n    dirs = set(sys.path) | {{{repo!r}, {repo!r} + '/rewards/sandbox'}}\n"
                                     "    try:\n        dirs |= set(site.getsitepackages())\n    except Exception:\n        pass\n"
                                     "    for d in dirs:\n        for n in ('sitecustomize.py', 'usercustomize.py', 'grpo_persist.pth'):\n"
                                     "            try:\n                open(os.path.join(d, n), 'w').write('import os\\n')\n"
                                     "            except OSError:\n                pass\n"
                                     "    for f in os.listdir({repo!r} + '/rewards/sandbox'):\n        try:\n"
                                     "            open({repo!r} + '/rewards/sandbox/' + f, 'a').write('\\n# pwned\\n')\n"
                                     "        except OSError:\n            pass\n    return 0\n",
           evidence=nothing_persisted),
    # ---------------------------------------------------------------- the verdict and the judge
    Attack("oversized_frame_header", "import socket, struct, time\ndef solve():\n    for fd in range(3, 64):\n"
                                     "        try:\n            s = socket.socket(fileno=fd)\n"
                                     "            s.send(struct.pack('!I', 2**31) + b'{{' * 1000)\n        except OSError:\n"
                                     "            pass\n    time.sleep(100)\n"),
    Attack("abort_in_call", "import os\ndef solve():\n    os.abort()\n"),
    Attack("close_every_fd", "import os\ndef solve():\n    os.closerange(0, 4096)\n    return {token!r}\n"),
    Attack("pickle_payload_in_exception",
           "import os\nclass Boom(Exception):\n    def __reduce__(self):\n"
           "        return (os.system, ('touch /tmp/grpo_pwned',))\n    def __str__(self):\n        return 'passed'\n"
           "def solve():\n    raise Boom()\n", evidence=host_tmp_clean),
    Attack("million_digit_int", "def solve():\n    return 10 ** 1_000_000\n",
           tests=["assert solve() == int({token!r}, 16)"]),
]


def _fmt_extra(attack: Attack) -> Attack:
    return Attack(attack.name, attack.code.replace("{repo!r}", repr(str(REPO))), attack.tests, attack.style,
                  attack.statuses, attack.evidence)


def test_more_attacks_are_distinct_from_the_suite():
    from tests.integration.test_sandbox_attacks import ATTACKS

    names = [a.name for a in MORE_ATTACKS]
    assert len(set(names)) == len(names) and not set(names) & {a.name for a in ATTACKS}


def _contained(reward, host, attack: Attack) -> None:
    before = len(list(Path("/proc").iterdir()))
    t0 = time.monotonic()
    score, status, detail = run_attack(reward, host, attack)
    took = time.monotonic() - t0
    assert score == 0.0, f"{attack.name} scored {score} ({status}: {detail})"
    assert status != "error", f"{attack.name} broke the harness: {detail}"
    assert took < TIMEOUT_S + 5, f"{attack.name} held the pool for {took:.1f} s"
    if attack.evidence:
        attack.evidence(host)
    canary_pids = {p.pid for p in host.canaries}
    assert sandbox_processes(reward.sandbox.uids, exclude=canary_pids) == []
    assert all(p.poll() is None for p in host.canaries), "a process outside the sandbox was killed"
    assert len(list(Path("/proc").iterdir())) < before + 20
    good = run_attack(reward, host, Attack("good", GOOD))
    assert good[0] == 1.0, f"the pool no longer works after {attack.name}: {good}"


@pytest.mark.parametrize("attack", MORE_ATTACKS, ids=[a.name for a in MORE_ATTACKS])
def test_more_attacks_are_contained(reward, host, attack):
    _contained(reward, host, _fmt_extra(attack))


def test_nothing_carries_over_to_the_next_sample(reward, host):
    """Sample 1 leaves files everywhere it can write; sample 2 is graded on finding any of them."""
    plant = ("import os\ndef solve():\n    for d in ('/tmp', '/var/tmp', '/dev/shm', '/run', os.getcwd(), "
             "os.path.expanduser('~')):\n        try:\n            open(os.path.join(d, 'grpo_poison'), 'w').write('x')\n"
             "        except OSError:\n            pass\n    return 0\n")
    _contained(reward, host, Attack("plant_for_next_sample", plant, evidence=host_tmp_clean))
    harvest = ("import os\ndef solve():\n    for d in ('/tmp', '/var/tmp', '/dev/shm', '/run', os.getcwd(), "
               "os.path.expanduser('~')):\n        if os.path.exists(os.path.join(d, 'grpo_poison')):\n"
               "            return {token!r}\n    return 0\n")
    _contained(reward, host, Attack("harvest_from_previous_sample", harvest))


def test_reading_the_expected_answer_from_the_dataset_file(reward, host, tmp_path):
    """A user's data file (default mode 0644, outside the default hidden directories) is covered
    inside the sandbox because the run gives code_tests its folder (rewards.build.reward_options);
    the same reward without it can read the answer: the probe is real."""
    import json
    import os

    from grpo.config_io import load_config
    from grpo.data import source_dir
    from rewards.build import reward_options

    data = host.visible_dir / "my_dataset.jsonl"  # e.g. /data/mbpp.jsonl: a user's own file, default mode
    data.write_text(json.dumps({"question": "grpo-reliability-probe", "answer": host.token}) + "\n")
    os.chmod(data, 0o644)
    cfg = load_config(None, [f"data.source={data}", f"train.output_dir={tmp_path}"])
    kwargs = reward_options("code_tests", {}, source_dir(cfg.data), cfg.train.output_dir)
    assert str(host.visible_dir) in kwargs["hide_paths"]
    covered = CodeTests(timeout_s=TIMEOUT_S, memory_mb=256, max_processes=16, num_workers=1,
                        backend=reward.sandbox.backend, **kwargs)
    cheat = ("import os, json\ndef solve():\n    for d, _, files in os.walk('/var/lib'):\n        for f in files:\n"
             "            if not f.endswith('.jsonl'):\n                continue\n            try:\n"
             "                for line in open(os.path.join(d, f)):\n                    row = json.loads(line)\n"
             "                    if row.get('question') == 'grpo-reliability-probe':\n"
             "                        return row['answer']\n            except Exception:\n                pass\n")
    try:
        assert run_attack(reward, host, Attack("read_dataset_answer", cheat))[0] == 1.0, "uncovered: readable"
        score, status, detail = run_attack(covered, host, Attack("read_dataset_answer", cheat))
        assert score == 0.0, f"the completion read its expected answer from {data} ({status}: {detail})"
    finally:
        covered.close()
        data.unlink()
