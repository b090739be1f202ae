"""Checkpoints under faults: SIGTERM/SIGKILL in the middle of a write, a really full disk,
and corrupt or truncated checkpoints at resume time.

Every case ends with the same proof: the newest *good* checkpoint is what latest_checkpoint()
returns, it loads, and its weights are exactly those that were saved; a later save cleans up.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch

import grpo.checkpoint as ck
from grpo.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from grpo.errors import CheckpointError
from tests.reliability.forking import killed_at

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def policy(tiny_dirs):
    from grpo.models.loader import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_dirs["llama"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
    opt.step()
    return model, load_tokenizer(tiny_dirs["llama"]), opt


def _weights(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _perturb(model, by: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(by)


def _assert_loads_exactly(ckpt: Path, model, expected: dict) -> None:
    _perturb(model, 0.5)  # the load must overwrite whatever the model holds
    load_checkpoint(ckpt, model)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items()), f"{ckpt} does not hold the saved weights"


def _slow_torch_save(reached):
    real = torch.save

    def partial(obj, f, *a, **k):  # half of the trainer state reaches the disk, then the process dies
        buf = io.BytesIO()
        real(obj, buf, *a, **k)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        reached()
    torch.save = partial


def _mid_weights(reached):
    real = ck._save_model

    def partial(model, tokenizer, folder):
        real(model, tokenizer, folder)
        w = Path(folder) / "model.safetensors"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])  # as if the write stopped half-way
        reached()
    ck._save_model = partial


def _before_rename(reached):
    real = ck._fsync_tree

    def synced(folder):
        real(folder)
        reached()  # everything written and synced, not yet renamed into place
    ck._fsync_tree = synced


def _during_prune(reached):
    ck._prune = lambda root, keep: reached()


def _replacing_between_renames(reached):
    """Re-saving a step that exists (the loop's last save, then the final save): die between
    taking the old copy away and putting the new one in place."""
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if Path(src).name.startswith("step-"):
            reached()
    os.replace = replace


def _replacing_deleting_old(reached):
    """Re-saving a step that exists: die half-way through deleting the old copy."""
    real = shutil.rmtree

    def rmtree(path, *a, **k):
        p = Path(path)
        if p.name.startswith(("step-", ".replaced-")):
            for f in sorted(p.iterdir())[::2]:
                f.unlink()
            reached()
        return real(path, *a, **k)
    ck.shutil.rmtree = rmtree


KILL_POINTS = {  # name: (patch, step the child saves, step latest must be, weights it must hold)
    "writing_weights": (_mid_weights, 2, 1, "old"),
    "writing_trainer_state": (_slow_torch_save, 2, 1, "old"),
    "written_not_renamed": (_before_rename, 2, 1, "old"),
    "pruning_old_ones": (_during_prune, 2, 2, "new"),
    "resave_between_renames": (_replacing_between_renames, 1, 1, "old"),
    "resave_deleting_old_copy": (_replacing_deleting_old, 1, 1, "new"),
}
CHILD_SHIFT = 0.25  # the child's weights: every parameter + 0.25


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_during_checkpoint_write(point, sig, tmp_path, policy):
    model, tok, opt = policy
    install, child_step, expect_step, holds = KILL_POINTS[point]
    save_checkpoint(tmp_path, 1, model, tok, opt, extra={"sampler": {"epoch": 0, "position": 1}}, keep=1)
    old = _weights(model)
    params = {k for k, _ in model.named_parameters()}
    new = {k: v + CHILD_SHIFT if k in params else v for k, v in old.items()}

    def child(reached):
        _perturb(model, CHILD_SHIFT)
        install(reached)
        save_checkpoint(tmp_path, child_step, model, tok, opt, extra={"sampler": {"epoch": 0, "position": 2}},
                        keep=1)

    killed_at(child, sig)
    latest = latest_checkpoint(tmp_path)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert latest is not None, f"after a {sig.name} while {point}: no loadable checkpoint; left {left}"
    state = load_checkpoint(latest, model)
    assert state["step"] == expect_step, f"{point}: latest is {latest.name}; left {left}"
    _assert_loads_exactly(latest, model, old if holds == "old" else new)
    # the next save (a new process: other pid) restores/cleans what the killed one left behind
    save_checkpoint(tmp_path, 3, model, tok, opt, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", f"step-{expect_step:06d}"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [f"step-{expect_step:06d}", "step-000003"]


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A real, tiny filesystem (tmpfs); sized by the test with `remount`."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")

    def resize(nbytes: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={nbytes}", str(mnt)], check=True)

    try:
        yield mnt, resize
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_really_full_disk_keeps_last_good_checkpoint(small_tmpfs, policy):
    model, tok, opt = policy
    mnt, resize = small_tmpfs
    first = save_checkpoint(mnt, 1, model, tok, opt, keep=3)
    resize(int(_du(mnt) * 1.5) // 4096 * 4096)  # room for half of another checkpoint
    at_step1 = _weights(model)
    _perturb(model, 0.1)
    with pytest.raises(CheckpointError, match=r"disk full.*step-000001 is intact"):
        save_checkpoint(mnt, 2, model, tok, opt, keep=3)
    assert [p.name for p in (mnt / "checkpoints").iterdir()] == ["step-000001"]  # no half-written leftovers
    assert latest_checkpoint(mnt) == first
    _assert_loads_exactly(first, model, at_step1)
    probe = mnt / "probe"  # the space of the failed write was given back
    probe.write_bytes(b"x" * (_du(mnt) // 3))
    probe.unlink()


def test_disk_full_in_a_training_run_is_a_clear_error(small_tmpfs, tiny_cfg, tiny_dirs):
    from recipes.train_grpo import main
    from tests.reliability.fakes import FakeEngine

    mnt, resize = small_tmpfs
    cfg = tiny_cfg(mnt, ["train.steps=3", "train.save_every=1", "train.keep_checkpoints=3"])
    weights = (Path(tiny_dirs["llama"]) / "model.safetensors").stat().st_size
    resize(int(2.5 * 3 * weights) // 4096 * 4096)  # ~2.5 checkpoints (weights + 2 AdamW moments each)
    try:
        main(cfg, engine=FakeEngine(tiny_dirs["llama"]))
    except CheckpointError as e:
        assert "disk full" in str(e) and "is intact" in str(e) and "resume" in str(e)
    else:
        pytest.fail("the run should have hit the full disk")
    good = list_checkpoints(mnt / "run")
    assert good and latest_checkpoint(mnt / "run") == good[0]
    assert not [p for p in (mnt / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]
