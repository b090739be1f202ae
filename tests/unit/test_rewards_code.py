"""The pure parts of code_tests and the sandbox: code extraction, output comparison, the wire format,
the judge's handling of candidate replies, the filesystem plan. (Real sandbox runs: tests/integration.)"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest

from rewards.code_tests import extract_code, outputs_match
from rewards.sandbox import SandboxLimits, fsview, judge, wire


@pytest.mark.parametrize("completion,entry,expected", [
    ("def f():\n    return 1\n", None, "def f():\n    return 1\n"),  # no fence: the whole text
    ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", None, "def f():\n    return 1\n"),
    ("```py\nx = 1\n```", None, "x = 1\n"),
    ("```\ndef g(): pass\n```", None, "def g(): pass\n"),  # untagged fences count as Python
    ("```bash\nrm -rf /\n```", None, ""),  # only non-Python fences: no code
    ("```python\ndef f():\n    return 1\n```\nUsage:\n```python\nprint(f())\n```", None,
     "def f():\n    return 1\n"),  # the longest block
    ("```python\ndef helper_with_a_long_name_and_body():\n    return 12345678\n```\n```python\ndef f(): return 2\n```",
     "f", "def f(): return 2\n"),  # the block defining the entry point wins
    ("```python\ndef f():\n    return 1\n", None, "def f():\n    return 1\n"),  # unterminated fence
])
def test_extract_code(completion, entry, expected):
    assert extract_code(completion, entry) == expected


@pytest.mark.parametrize("actual,expected,mode,ok", [
    ("1 2\n3\n", "1 2\n3", "lines", True),
    ("1 2  \n3\n\n\n", "1 2\n3\n", "lines", True),
    ("1  2\n3", "1 2\n3", "lines", False),
    ("1  2\n3", "1 2 3", "tokens", True),
    ("1 2\n", "1 2", "exact", False),
    ("", "", "lines", True),
])
def test_outputs_match(actual, expected, mode, ok):
    assert outputs_match(actual, expected, mode) is ok


class Sneaky(int):
    def __eq__(self, other):  # would make any `==` pass in-process
        return True

    __hash__ = int.__hash__


class Truthy(list):
    def __bool__(self):
        return True


def roundtrip(value):
    return wire.loads_value(json.dumps(wire.encode(value)))


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2 ** 200, -(3 ** 99), 1.5, math.inf, "héllo", b"\x00\xff", 1 + 2j,
    [1, [2, (3,)]], (1, "a"), (), {"a": 1, 2: [3]}, {(1, 2): {3}}, {1, 2}, frozenset({"x"}),
])
def test_wire_roundtrip_keeps_exact_types(value):
    back = roundtrip(value)
    assert back == value and type(back) is type(value)


def test_wire_strips_forged_behaviour():
    back = roundtrip(Sneaky(3))
    assert type(back) is int and back == 3 and back != 4
    back = roundtrip(Truthy())
    assert type(back) is list and not back
    assert list(roundtrip(iter([1, 2]))) == [1, 2]  # iterators arrive as iterators, not lists
    assert math.isnan(roundtrip(math.nan))


@pytest.mark.parametrize("value", [object(), lambda: 1, type, open])
def test_wire_refuses_non_data(value):
    with pytest.raises(wire.WireError, match="cannot cross"):
        wire.encode(value)


@pytest.mark.parametrize("text", ['{"Q": 1}', '{"L": 1}', '{"D": [[{"L": []}, 1]]}', '{"B": "%%%"}',
                                  '{"L": [1], "T": [2]}', "[" * 100000 + "]" * 100000])
def test_wire_rejects_malformed_values(text):
    with pytest.raises(wire.WireError):
        wire.loads_value(text)


def fake_candidate(replies):
    """A socket pair whose far end answers each frame with the next reply (raw bytes or a frame)."""
    ours, theirs = socket.socketpair()

    def serve():
        for reply in replies:
            try:
                if reply != "handshake":
                    wire.recv_frame_text(theirs)
                if isinstance(reply, bytes):
                    theirs.sendall(reply)
                else:
                    wire.send_frame(theirs, ["ready", ["f"]] if reply == "handshake" else reply)
            except (EOFError, OSError):
                return
        theirs.close()

    threading.Thread(target=serve, daemon=True).start()
    import time
    return judge.Remote(ours, time.monotonic() + 5)


def test_judge_remote_maps_replies():
    remote = fake_candidate(["handshake", ["ok", {"T": [1, 2]}], ["exc", "ValueError", "no"],
                             ["exc", "MyError", "custom"], ["ok", 3]])
    assert remote.handshake() == ["f"]
    f = remote.proxy("f")
    assert f(1) == (1, 2)
    with pytest.raises(ValueError, match="no"):
        f()
    with pytest.raises(judge.CandidateError, match="custom"):
        f()
    assert f() == 3


@pytest.mark.parametrize("reply,why", [
    (["exc", "SystemExit", "0"], "raised SystemExit"),
    (["ok", {"Z": 1}], "protocol violation"),
    (["passed"], "protocol violation"),
    (b"\xff\xff\xff\xff", "protocol violation"),  # an absurd frame length
    (["bad_value", "object"], "not plain data"),
])
def test_judge_marks_misbehaviour_as_broken_for_good(reply, why):
    remote = fake_candidate(["handshake", reply, ["ok", 1]])
    remote.handshake()
    with pytest.raises(judge.Broken, match=why):
        remote.call("f", (), {})
    with pytest.raises(judge.Broken):  # sticky: even a well-formed reply is no longer believed
        remote.call("f", (), {})


def test_judge_broken_when_candidate_disappears():
    remote = fake_candidate(["handshake"])
    remote.handshake()
    with pytest.raises(judge.Broken, match="exited"):
        remote.call("f", (), {})


def test_judge_refuses_to_forward_callables():
    remote = fake_candidate(["handshake"])
    remote.handshake()
    with pytest.raises(judge.BoundaryError, match="cannot forward"):
        remote.call("f", (lambda x: x,), {})


@pytest.fixture
def open_dir():
    """A scratch directory that others may traverse (pytest's tmp_path sits under a 0700 directory)."""
    d = tempfile.mkdtemp(dir="/var/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d)


def test_fsview_plan(open_dir):
    locked = open_dir / "locked"
    (locked / "py" / "lib").mkdir(parents=True)
    os.chmod(locked, 0o700)
    home = open_dir / "home"
    (home / "venv").mkdir(parents=True)
    (open_dir / "free").mkdir()
    expose = [str(locked / "py" / "lib"), str(home / "venv"), str(open_dir / "free")]
    hide, rebind = fsview.plan(expose, [str(home)], tmpfs_dirs=())
    assert fsview.blocked_ancestor(str(locked / "py")) == str(locked)
    assert hide == sorted([str(locked), str(home)])  # the blocking directory is covered too
    assert rebind == sorted([str(locked / "py" / "lib"), str(home / "venv")])  # and what lies beneath comes back
    hide, rebind = fsview.plan(expose, [str(home)])  # with /var/tmp a private tmpfs, nothing under it matters
    assert hide == [] and rebind == []


def test_fsview_plan_never_hides_root_or_tmpfs_parents():
    hide, _ = fsview.plan(["/usr/lib"], ["/", "/var", "/dev", "/usr"])
    assert hide == ["/usr"]


def test_limits_are_validated():
    assert SandboxLimits(timeout_s=2.5).rlimits()["cpu"] == 4
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxLimits(memory_mb=0)
    with pytest.raises(ValueError, match="max_processes"):
        SandboxLimits(max_processes=2)
