"""Loop building blocks: prompt sampler (exact resume), dynamic sampling, pass@k, checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch

from grpo.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from grpo.dynamic_sampling import refill_zero_variance_groups
from grpo.errors import CheckpointError
from grpo.evaluate import pass_at_k
from grpo.sampler import PromptSampler
from rollouts.types import Completion


def test_sampler_resumes_exactly():
    a = PromptSampler(7, seed=3)
    for _ in range(2):
        a.next_batch(3)
    saved = json.loads(json.dumps(a.state()))
    rest = [a.next_batch(3) for _ in range(4)]
    b = PromptSampler(7, seed=3)
    b.load_state(saved)
    assert [b.next_batch(3) for _ in range(4)] == rest
    assert sorted(PromptSampler(7, seed=3).next_batch(7)) == list(range(7))  # an epoch visits each prompt once


def test_difficulty_curriculum_goes_easy_first():
    s = PromptSampler(6, seed=0, curriculum="difficulty", difficulty=[5, 1, 3, 0, 2, 4])
    assert s.next_batch(6) == [3, 1, 4, 2, 5, 0]


def test_pass_rate_curriculum_prefers_uncertain_prompts():
    s = PromptSampler(2, seed=0, curriculum="pass_rate")
    s.record(0, 1.0)
    s.record(1, 0.5)
    picks = [s.next_batch(1)[0] for _ in range(200)]
    assert picks.count(1) > 150


def _group(pid: int, G: int) -> list[Completion]:
    return [Completion(pid, [1], [2], [-0.1], "x", "stop") for _ in range(G)]


def test_dynamic_sampling_replaces_flat_groups():
    G = 2
    ids, comps = [10, 11], _group(0, G) + _group(1, G)
    scores = torch.tensor([1.0, 1.0, 0.0, 1.0])  # group 0 flat, group 1 informative
    draws = iter([([12], _group(0, G), torch.tensor([0.0, 0.0])), ([13], _group(0, G), torch.tensor([1.0, 0.0]))])
    out_ids, out_c, out_s, m = refill_zero_variance_groups(ids, comps, scores, G, 3, lambda n: next(draws))
    assert out_ids == [11, 13] and out_s.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert [c.prompt_index for c in out_c] == [0, 0, 1, 1]
    assert m["dynamic_sampling/rounds"] == 2 and m["dynamic_sampling/filler_groups"] == 0


def test_dynamic_sampling_is_bounded():
    G = 2
    flat = lambda n: ([99] * n, sum((_group(i, G) for i in range(n)), []), torch.zeros(n * G))  # noqa: E731
    out_ids, _, _, m = refill_zero_variance_groups([1], _group(0, G), torch.zeros(2), G, 2, flat)
    assert m["dynamic_sampling/rounds"] == 2 and m["dynamic_sampling/filler_groups"] == 1 and len(out_ids) == 1


def test_pass_at_k():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)


@pytest.fixture()
def tiny_policy(tiny_dirs):
    from grpo.models.loader import load_causal_lm, load_tokenizer

    return load_causal_lm(tiny_dirs["llama"]), load_tokenizer(tiny_dirs["llama"])


def test_checkpoint_round_trip_and_pruning(tmp_path, tiny_policy):
    model, tok = tiny_policy
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[5, 6, 7]]), labels=torch.tensor([[5, 6, 7]])).loss.backward()
    opt.step()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, tok, opt, extra={"sampler": {"epoch": 0}}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003", "step-000002"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    state = load_checkpoint(latest_checkpoint(tmp_path), model, opt)
    assert state["step"] == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(torch.rand(3), expected_next)  # RNG restored to the save point, not the later seed


def test_checkpoint_refuses_nan_weights(tmp_path, tiny_policy):
    model, tok = tiny_policy
    save_checkpoint(tmp_path, 1, model, tok)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN/Inf"):
        save_checkpoint(tmp_path, 2, model, tok)
    assert latest_checkpoint(tmp_path).name == "step-000001"


def test_corrupt_latest_checkpoint_is_skipped(tmp_path, tiny_policy):
    model, tok = tiny_policy
    save_checkpoint(tmp_path, 1, model, tok, keep=3)
    bad = save_checkpoint(tmp_path, 2, model, tok, keep=3)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert latest_checkpoint(tmp_path).name == "step-000001"


def test_disk_full_keeps_last_good_checkpoint(tmp_path, tiny_policy, monkeypatch):
    import errno

    model, tok = tiny_policy
    save_checkpoint(tmp_path, 1, model, tok)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"disk full.*step-000001 is intact"):
        save_checkpoint(tmp_path, 2, model, tok)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000001"]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert os.listdir(tmp_path / "checkpoints" / "step-000001")
