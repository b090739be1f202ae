"""Resume: a run killed after step k and resumed with train.resume=true ends with exactly the
parameters of an uninterrupted run (issue #5 acceptance: tiny Mixtral, HF engine, toy reward,
CPU, fixed seeds, tolerance 1e-6) - whether it was killed between steps or in the middle of
writing a checkpoint, and when its latest checkpoint is corrupt (it resumes from the one before).
The metrics file reads back cleanly, one record per step.
"""

from __future__ import annotations

import logging
import shutil
import signal
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo.checkpoint import list_checkpoints
from grpo.errors import CheckpointError
from grpo.metrics import read_jsonl
from tests.reliability.conftest import step_records
from tests.reliability.fakes import FakeEngine
from tests.reliability.forking import killed_at

pytestmark = pytest.mark.integration
TOY = Path(__file__).parents[1] / "e2e" / "toy_rewards.py"
EXACT = ["train.steps=4", "train.save_every=1", "train.keep_checkpoints=3", "rollout.engine=hf",
         f"rewards.functions=[{{name: '{TOY}:digit_fraction'}}]"]


def _final_weights(run_dir: Path) -> dict:
    return load_file(Path(run_dir) / "checkpoints" / "step-000004" / "model.safetensors")


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_cfg):
    from recipes.train_grpo import main

    out = tmp_path_factory.mktemp("full")
    main(tiny_cfg(out, EXACT, model="mixtral"))
    return out / "run"


def _kill_between_steps(tg, reached):
    real = tg.train_step

    def step(state, n):
        if n == 3:
            reached()  # steps 1-2 done and checkpointed; killed before step 3 starts
        return real(state, n)
    tg.train_step = step


def _kill_writing_checkpoint_3(tg, reached):
    import io

    real = torch.save

    def half_written(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("step") == 3:  # step 3 trained and logged; its state half-written
            buf = io.BytesIO()
            real(obj, buf, *a, **k)
            Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
            reached()
        return real(obj, f, *a, **k)
    torch.save = half_written  # the child process's own torch: the parent is not affected


def _train_until_killed(kill, cfg, reached):
    import recipes.train_grpo as tg

    kill(tg, reached)
    tg.main(cfg)


@pytest.mark.parametrize("kill", [_kill_between_steps, _kill_writing_checkpoint_3],
                         ids=["between_steps", "writing_checkpoint"])
def test_resumed_run_equals_uninterrupted(kill, tmp_path, tiny_cfg, uninterrupted):
    import recipes.train_grpo as tg

    cfg = tiny_cfg(tmp_path, EXACT, model="mixtral")
    killed_at(partial(_train_until_killed, kill, cfg), signal.SIGKILL, fresh=True)  # trains: not a fork
    assert [p.name for p in list_checkpoints(tmp_path / "run")][0] == "step-000002"
    tg.main(tiny_cfg(tmp_path, [*EXACT, "train.resume=true"], model="mixtral"))

    want, got = _final_weights(uninterrupted), _final_weights(tmp_path / "run")
    base = load_file(Path(cfg.model.name) / "model.safetensors")
    assert _max_diff(want, base) > 1e-4, "the runs must actually train"
    diff = _max_diff(want, got)
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff:.3e}"
    # the same rollouts and rewards, step by step; one record per step in the metrics file
    full, resumed = step_records(uninterrupted), step_records(tmp_path / "run")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full, resumed):
        assert a["reward/mean"] == b["reward/mean"] and a["completion/mean_tokens"] == b["completion/mean_tokens"]


# ------------------------------------------------------------------ corrupt checkpoints at resume time
FAST = ["train.steps=4", "train.save_every=1", "train.keep_checkpoints=3"]


@pytest.fixture(scope="module")
def fast_reference(tmp_path_factory, tiny_cfg, tiny_dirs):
    """An uninterrupted 4-step run (fake engine: fast) keeping checkpoints 2, 3, 4."""
    from recipes.train_grpo import main

    out = tmp_path_factory.mktemp("fast")
    main(tiny_cfg(out, FAST), engine=FakeEngine(tiny_dirs["llama"]))
    return out / "run"


def _truncate(name):
    def corrupt(ckpt: Path):
        f = ckpt / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return corrupt


def _garbage(name):
    def corrupt(ckpt: Path):
        (ckpt / name).write_bytes(b"\x00garbage" * 64)
    return corrupt


def _zero_weights(ckpt: Path):
    (ckpt / "model.safetensors").write_bytes(b"")


def _no_marker(ckpt: Path):
    (ckpt / "complete.json").unlink()


def _foreign_state(ckpt: Path):
    torch.save({"not": "a trainer state"}, ckpt / "trainer_state.pt")


def _other_shapes(ckpt: Path):  # weights of another model under the same names
    w = load_file(ckpt / "model.safetensors")
    from safetensors.torch import save_file

    save_file({k: torch.zeros(*(d + 1 for d in v.shape)) for k, v in w.items()}, str(ckpt / "model.safetensors"),
              metadata={"format": "pt"})


CORRUPTIONS = {
    "weights_truncated": _truncate("model.safetensors"), "weights_empty": _zero_weights,
    "weights_other_shapes": _other_shapes, "trainer_state_truncated": _truncate("trainer_state.pt"),
    "trainer_state_garbage": _garbage("trainer_state.pt"), "trainer_state_foreign": _foreign_state,
    "config_garbage": _garbage("config.json"), "complete_marker_missing": _no_marker,
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_corrupt_latest_checkpoint_resumes_from_the_one_before(corruption, tmp_path, tiny_cfg, tiny_dirs,
                                                               fast_reference, caplog):
    from recipes.train_grpo import main

    caplog.set_level(logging.INFO, logger="grpo")
    run = tmp_path / "run"
    shutil.copytree(fast_reference, run)
    shutil.rmtree(run / "checkpoints" / "step-000004")  # as if killed before step 4: latest is 3
    CORRUPTIONS[corruption](run / "checkpoints" / "step-000003")
    main(tiny_cfg(tmp_path, [*FAST, "train.resume=true"]), engine=FakeEngine(tiny_dirs["llama"]))
    assert any("resumed from" in r.getMessage() and "step-000002" in r.getMessage() for r in caplog.records)
    assert _max_diff(_final_weights(fast_reference), _final_weights(run)) <= 1e-6
    assert [r["step"] for r in step_records(run)] == [1, 2, 3, 4]


def test_all_checkpoints_corrupt_is_a_clear_error(tmp_path, tiny_cfg, tiny_dirs, fast_reference):
    from recipes.train_grpo import main

    run = tmp_path / "run"
    shutil.copytree(fast_reference, run)
    for ckpt in list_checkpoints(run):
        _garbage("trainer_state.pt")(ckpt)
    with pytest.raises(CheckpointError, match=r"none of the 3 checkpoints .* loads"):
        main(tiny_cfg(tmp_path, [*FAST, "train.resume=true"]), engine=FakeEngine(tiny_dirs["llama"]))


def test_torn_last_metrics_line_does_not_break_resume(tmp_path, tiny_cfg, tiny_dirs, fast_reference):
    """A kill in the middle of appending to metrics.jsonl leaves half a line: the resumed run
    (and its plots) must still read the file."""
    from recipes.train_grpo import main

    run = tmp_path / "run"
    shutil.copytree(fast_reference, run)
    shutil.rmtree(run / "checkpoints" / "step-000004")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "reward/mean": 0.')
    main(tiny_cfg(tmp_path, [*FAST, "train.resume=true", "train.plots=true"]), engine=FakeEngine(tiny_dirs["llama"]))
    assert [r["step"] for r in step_records(run)] == [1, 2, 3, 4]
    assert read_jsonl(run / "metrics.jsonl")[-1]["step"] == 4
