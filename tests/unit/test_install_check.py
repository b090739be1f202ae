"""`make install`'s bubblewrap step never fails the install and says what happened; the test run's
closing summary says which sandbox backends the attack suites exercised; engine tests fail (not
skip) without vLLM."""

from __future__ import annotations

import importlib.util
from collections import Counter
from types import SimpleNamespace

import pytest

import grpo.install_check as ic
from tests.conftest import backend_summary, require_vllm


class FakeSystem:
    """which/run/euid for install_bubblewrap: apt-get succeeds after `apt_ok_after` install tries."""

    def __init__(self, bwrap: bool = False, root: bool = True, apt: bool = True, apt_ok_after: int = 0,
                 probe_rc: int = 0) -> None:
        self.bwrap, self.root, self.apt, self.apt_ok_after, self.probe_rc = bwrap, root, apt, apt_ok_after, probe_rc
        self.calls: list[list[str]] = []

    def which(self, name: str):
        return {"bwrap": "/usr/bin/bwrap" if self.bwrap else None,
                "apt-get": "/usr/bin/apt-get" if self.apt else None}[name]

    def euid(self) -> int:
        return 0 if self.root else 1000

    def run(self, cmd, **_):
        self.calls.append(cmd)
        if cmd[0] == "bwrap":
            return SimpleNamespace(returncode=self.probe_rc, stderr="bwrap: No permissions to create new namespace\n")
        if cmd[:2] == ["apt-get", "install"]:
            ok = sum(c[:2] == ["apt-get", "install"] for c in self.calls) > self.apt_ok_after
            self.bwrap = self.bwrap or ok
            return SimpleNamespace(returncode=0 if ok else 100, stderr="")
        return SimpleNamespace(returncode=0, stderr="")  # apt-get update


def _install(fake: FakeSystem) -> str:
    return ic.install_bubblewrap(run=fake.run, which=fake.which, euid=fake.euid)


def test_installs_with_apt_as_root_and_probes_it():
    fake = FakeSystem()
    assert "bwrap works here" in _install(fake)
    assert fake.calls[0][:3] == ["apt-get", "install", "-y"] and fake.calls[-1] == ic.BWRAP_PROBE


def test_refreshes_the_package_lists_once_when_the_first_try_fails():
    fake = FakeSystem(apt_ok_after=1)
    assert "bwrap works here" in _install(fake)
    assert [c[1] for c in fake.calls if c[0] == "apt-get"] == ["install", "update", "install"]


def test_never_fails_and_says_why():
    assert "not root" in _install(FakeSystem(root=False))
    assert "no apt-get" in _install(FakeSystem(apt=False))
    fake = FakeSystem(apt_ok_after=5)
    assert "apt-get install bubblewrap failed" in _install(fake) and len(fake.calls) == 3  # no endless retries
    said = _install(FakeSystem(bwrap=True, probe_rc=1))
    assert "installed but cannot start a sandbox here (bwrap: No permissions" in said and "only unshare" in said


def test_already_installed_is_only_probed():
    fake = FakeSystem(bwrap=True)
    assert "bwrap works here" in _install(fake) and fake.calls == [ic.BWRAP_PROBE]


def test_summary_names_the_backends_exercised_and_why_one_was_not():
    runs = {"unshare": Counter(passed=69), "bwrap": Counter(skipped=69),
            "bwrap:why": Counter({"Skipped: bwrap is not installed": 69})}
    assert backend_summary(runs) == [
        "sandbox backend unshare: EXERCISED (69 passed)",
        "sandbox backend bwrap: NOT EXERCISED (69 skipped); skipped because: Skipped: bwrap is not installed",
    ]
    assert backend_summary({"unshare": Counter(passed=3, failed=1)}) == [
        "sandbox backend unshare: EXERCISED (1 failed, 3 passed)"]
    assert backend_summary({}, ["tests/integration/test_sandbox_attacks.py"]) == [
        "tests/integration/test_sandbox_attacks.py: NOT RUN on any backend (no pids guard: run it through "
        "tests/guarded.sh)"]


def test_engine_tests_fail_rather_than_skip_without_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(pytest.fail.Exception, match="vLLM is not installed"):
        require_vllm()
