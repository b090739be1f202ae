"""The generation engine dies mid-run: an in-process engine raising, an engine failing while
taking the new weights, and a (fake) vLLM server process SIGKILLed in the middle of a step,
reached through the real VLLMServerEngine.

Each time: a clear error (an EngineError naming the step and what died), the last good
checkpoint intact and loadable, and a resumed run that finishes.
"""

from __future__ import annotations

import pytest
import torch

from grpo.checkpoint import latest_checkpoint, load_checkpoint
from grpo.errors import EngineError
from tests.reliability.conftest import step_records
from tests.reliability.fakes import FakeEngine, FakeServer, FaultyEngine

pytestmark = pytest.mark.integration
SAVE = ["train.steps=4", "train.save_every=1", "train.keep_checkpoints=2"]


def _check_last_good(run_dir, step: int, tiny_dirs) -> None:
    from grpo.models.loader import load_causal_lm

    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.name == f"step-{step:06d}", ckpt
    model = load_causal_lm(tiny_dirs["llama"])
    base = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_checkpoint(ckpt, model)["step"] == step
    moved = max(float((model.state_dict()[k] - base[k]).abs().max()) for k in base)
    assert moved > 0 and all(torch.isfinite(p).all() for p in model.parameters())
    assert not [p for p in ckpt.parent.iterdir() if p.name.startswith(".")], "half-written leftovers"


def _resume_finishes(tiny_cfg, tmp_path, tiny_dirs, engine=None) -> list[int]:
    from recipes.train_grpo import main

    main(tiny_cfg(tmp_path, [*SAVE, "train.resume=true"]), engine=engine or FakeEngine(tiny_dirs["llama"]))
    return [r["step"] for r in step_records(tmp_path / "run")]


@pytest.mark.parametrize("where", ["generate", "update_weights"])
def test_engine_dies_mid_run(where, tmp_path, tiny_cfg, tiny_dirs):
    from recipes.train_grpo import main

    # generate calls: 1 = eval before, 2.. = steps 1..; update calls: 1 = initial sync, 2.. = after steps 1..
    fail = {"generate_at": 4} if where == "generate" else {"update_at": 4}  # both: in step 3
    engine = FaultyEngine(FakeEngine(tiny_dirs["llama"]), fail_generate_at=fail.get("generate_at"),
                          fail_update_at=fail.get("update_at"))
    with pytest.raises(EngineError) as info:
        main(tiny_cfg(tmp_path, SAVE), engine=engine)
    msg = str(info.value)
    assert "step 3" in msg and "engine process died" in msg and "resume" in msg, msg
    assert isinstance(info.value.__cause__, RuntimeError)  # the engine's own error is kept as the cause
    _check_last_good(tmp_path / "run", 2, tiny_dirs)
    assert _resume_finishes(tiny_cfg, tmp_path, tiny_dirs) == [1, 2, 3, 4]


def test_vllm_server_killed_mid_step(tmp_path, tiny_cfg, tiny_dirs, caplog):
    """A server process that dies while answering (SIGKILL in the middle of step 3's requests)."""
    from recipes.train_grpo import main
    from rollouts.server_engine import VLLMServerEngine

    # /v1/completions requests: one per prompt; 4 for the eval before, then 4 per step: #14 is in step 3
    server = FakeServer(die_at=14)
    engine = VLLMServerEngine(tiny_dirs["llama"], server_url=server.url, retries=1, request_timeout=10)
    try:
        with pytest.raises(EngineError) as info:
            main(tiny_cfg(tmp_path, SAVE), engine=engine)
        assert not server.alive()
        # refused connection: the engine's own "unreachable" EngineError; a reply cut off mid-body
        # (http.client.IncompleteRead, not retried by rollouts/http.py): wrapped by the loop, naming the step
        msg = str(info.value)
        assert "unreachable after 2 attempts" in msg or "failed in generate at step 3" in msg, msg
        stop = [r.getMessage() for r in caplog.records if "training stopped" in r.getMessage()]
        assert stop and "in step 3" in stop[0] and "step-000002" in stop[0] and "train.resume=true" in stop[0]
    finally:
        engine.shutdown()
        server.close()
    _check_last_good(tmp_path / "run", 2, tiny_dirs)
    server = FakeServer()  # the server is restarted; the run resumes from step 2
    engine = VLLMServerEngine(tiny_dirs["llama"], server_url=server.url, retries=1, request_timeout=10)
    try:
        assert _resume_finishes(tiny_cfg, tmp_path, tiny_dirs, engine) == [1, 2, 3, 4]
    finally:
        engine.shutdown()
        server.close()
