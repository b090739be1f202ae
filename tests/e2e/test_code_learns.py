"""End to end on code: a short GRPO run of the embedded smollm2-135m-moe on procedural code problems
(`code_synth`, hidden asserts run by `code_tests` in the real sandbox, vLLM rollouts, a weight sync
every step) must raise the training reward."""

from __future__ import annotations

import pytest

from grpo.config_io import load_config
from grpo.metrics import read_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SYSTEM = "You are a Python programmer. Reply with only the Python function in a ```python code block, no explanation."
STEPS, K = 12, 4


def _run(tmp_path, model: str, engine, seed: int) -> list[dict]:
    from recipes.train_grpo import main

    cfg = load_config(None, [
        f"model.name={model}", "data.source=code_synth", "data.train_size=300", "data.eval_size=4",
        f"data.system_prompt='{SYSTEM}'", "data.generator_kwargs={levels: [1, 2]}",
        "rollout.engine=vllm", "rollout.group_size=8", "rollout.max_tokens=96", "rollout.max_model_len=512",
        'rollout.stop=["\\n```\\n"]', "rollout.return_routing=true",
        "rewards.functions=[{name: code_tests, kwargs: {partial_credit: true, timeout_s: 5}}]",
        "algo.loss=grpo", "algo.is_correction=token_truncate", "moe.routing_replay=r3",
        "optim.lr=3e-5", "optim.micro_batch_tokens=512", f"train.steps={STEPS}", "train.prompts_per_step=4",
        f"train.seed={seed}", f"train.output_dir={tmp_path}", "train.run_name=code", "train.plots=false",
        "train.tensorboard=false", "train.save_every=0", "train.eval_temperature=0.0", "moe.kl_diag_every=0",
    ])
    main(cfg, engine=engine)
    return [r for r in read_jsonl(tmp_path / "code" / "metrics.jsonl") if "reward/mean" in r]


def test_code_grpo_on_embedded_model_raises_reward(tmp_path, vllm_engine, restore_weights):
    from grpo.models.loader import resolve_model

    model_dir = resolve_model("smollm2-135m-moe")
    engine = vllm_engine(model_dir, max_model_len=512, max_num_seqs=32)
    with restore_weights(engine):
        steps = _run(tmp_path, str(model_dir), engine, seed=0)
    rewards = [r["reward/mean"] for r in steps]
    start, end = sum(rewards[:K]) / K, sum(rewards[-K:]) / K
    print("code reward per step:", [round(x, 3) for x in rewards])
    assert len(rewards) == STEPS
    assert end > start + 0.15, f"code reward went {start:.3f} -> {end:.3f}"
    assert steps[-1]["reward/code_tests/frac_timeout"] < 0.5
