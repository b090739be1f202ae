"""Packing layout, masks, token-feature layout, budgets; shared-prompt update == padded batch."""

import numpy as np
import pytest
import torch

from grpo.batch import RolloutBatch
from grpo.config import AlgoConfig, OptimConfig
from grpo.logprobs import full_logprobs
from grpo.losses import LOSSES, LossInputs, LossNorm
from grpo.models.loader import load_causal_lm
from grpo.packing import auto_row_tokens, layout_token_features, pack_micro_batches, padded_equivalent_tokens
from grpo.update import policy_update


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is ~50x faster than two when the cores are shared (OpenMP spin)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_shared_prompt_row_layout_and_mask():
    # prompt [7, 8]; completions [20, 21, 22] and [30, 31]; the last token of each is not fed
    (mb,) = pack_micro_batches([[7, 8], [7, 8]], [[20, 21, 22], [30, 31]], [0, 0], shared_prompt=True)
    assert mb.input_ids.tolist() == [[7, 8, 20, 21, 30]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    m = mb.attention_mask[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0],  # 7
        [1, 1, 0, 0, 0],  # 8
        [1, 1, 1, 0, 0],  # 20: prompt + itself
        [1, 1, 1, 1, 0],  # 21
        [1, 1, 0, 0, 1],  # 30: prompt + itself, not completion 0
    ]
    # scored tokens: 20 predicted at 8 (flat 1), 21 at 20, 22 at 21; 30 at 8 again, 31 at 30
    assert mb.pred_flat.tolist() == [1, 2, 3, 1, 4]
    assert mb.target_ids.tolist() == [20, 21, 22, 30, 31]
    assert mb.tok_seq.tolist() == [0, 0, 0, 1, 1] and mb.tok_pos.tolist() == [0, 1, 2, 0, 1]
    assert mb.source_seq.tolist() == [[0, 0, 0, 0, 1]] and mb.source_pos.tolist() == [[0, 1, 2, 3, 2]]


def test_plain_packing_is_block_diagonal_causal_with_restarting_positions():
    (mb,) = pack_micro_batches([[1, 2], [3]], [[4, 5], [6, 7]], shared_prompt=False, max_row_tokens=100)
    # longest unit first: seq 0 (1, 2, 4) then seq 1 (3, 6)
    assert mb.input_ids.tolist() == [[1, 2, 4, 3, 6]] and mb.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    m = mb.attention_mask[0, 0].int()
    assert m[:3, :3].tolist() == torch.ones(3, 3).tril().int().tolist()
    assert m[3:, 3:].tolist() == [[1, 0], [1, 1]] and m[3:, :3].sum() == 0 and m[:3, 3:].sum() == 0


def test_budgets_rows_padding_and_group_split():
    prompts = [[1] * 4] * 6
    comps = [[2] * n for n in (9, 5, 3, 7, 2, 6)]
    mbs = pack_micro_batches(prompts, comps, [0, 0, 0, 1, 1, 1], shared_prompt=True,
                             micro_batch_tokens=16, max_row_tokens=12)
    seen = sorted(s for mb in mbs for s in mb.seq_index.tolist())
    assert seen == list(range(6))  # each sequence scored exactly once
    for mb in mbs:
        assert mb.num_slots <= 16 or mb.input_ids.shape[0] == 1
        assert mb.input_ids.shape[1] <= 12 or mb.input_ids.shape[0] == 1
        pad = mb.source_seq < 0
        assert (mb.attention_mask[:, 0].diagonal(dim1=1, dim2=2)).all()  # no all-masked rows
        assert not mb.attention_mask[:, 0][pad].any(-1).logical_and(
            mb.attention_mask[:, 0][pad].sum(-1) > 1).any()  # padding sees only itself
    # group 0 feeds 4 + 8 + 4 + 2 = 18 tokens > the 16-token micro-batch: split into two units, each
    # with its own copy of the prompt; group 1 feeds 4 + 6 + 1 + 5 = 16 and stays whole: 3 prompt copies
    prompt_copies = sum(int(((mb.source_pos == 0) & (mb.source_seq >= 0)).sum()) for mb in mbs)
    assert prompt_copies == 3
    assert padded_equivalent_tokens(prompts, comps) == 6 * (4 + 9)


def test_auto_row_tokens_floor_cap_and_width(tiny_dirs):
    llama = load_causal_lm(tiny_dirs["llama"])
    # tiny: 2 layers of 4*128*... params: 0.1 * 2 * per_layer / (4 * 128) is far below the floor
    assert auto_row_tokens(llama, 4096) == 256 and auto_row_tokens(llama, 100) == 100
    assert auto_row_tokens(llama, 4096, waste=10.0) > 256  # cost ratio scales the row


def test_layout_token_features_follows_packed_order():
    prompts, comps = [[1, 2], [1, 2], [3]], [[4, 5], [6], [7, 8, 9]]
    feats = [np.arange(len(p) + len(c))[:, None] * 10 + i for i, (p, c) in enumerate(zip(prompts, comps))]
    feats = [np.stack([f, f + 1], -1).astype(np.int16) for f in feats]  # [P+C, 1, 2] like routed experts
    (mb,) = pack_micro_batches(prompts, comps, [0, 0, 1], shared_prompt=True, micro_batch_tokens=100,
                               max_row_tokens=5)
    out = layout_token_features(feats, mb)  # [R*S, 1, 2]
    assert out.shape == (mb.input_ids.numel(), 1, 2) and out.dtype == torch.int16
    for flat in range(mb.input_ids.numel()):
        s, p = int(mb.source_seq.view(-1)[flat]), int(mb.source_pos.view(-1)[flat])
        expect = [-1, -1] if s < 0 else [p * 10 + s, p * 10 + s + 1]
        assert out[flat, 0].tolist() == expect
        if s >= 0:  # the packed token is the one the features describe
            assert int(mb.input_ids.view(-1)[flat]) == (prompts[s] + comps[s])[p]


def _rollouts(V, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts, comps, gids, adv = [], [], [], []
    for gi in range(3):
        P = torch.randint(5, V, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist()
        for _ in range(4):
            C = torch.randint(5, V, (int(torch.randint(2, 14, (1,), generator=g)),), generator=g).tolist()
            prompts.append(P)
            comps.append(C)
            gids.append(gi)
            adv.append(0.0 if gi == 2 else float(torch.randn(1, generator=g)))  # group 2: zero variance
    return RolloutBatch(prompts, comps, [[] for _ in comps], torch.tensor(adv), gids, [False] * len(comps))


class GradRecorder:
    """Stands in for the optimiser: step() keeps a copy of every gradient."""

    def __init__(self, model):
        self.model, self.param_groups, self.grads = model, [{"lr": 0.0}], None

    def step(self):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


def padded_loss_and_grads(model, batch, loss_name, algo, temperature):
    """The plain way: right-padded batch, 2D mask, full logits, one loss over all N sequences."""
    N, T = len(batch), batch.max_completion_len
    L = max(len(p) + len(c) for p, c in zip(batch.prompt_ids, batch.completion_ids))
    ids, am = torch.zeros(N, L, dtype=torch.long), torch.zeros(N, L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        ids[i, : len(p) + len(c)], am[i, : len(p) + len(c)] = torch.tensor(p + c), 1
    logits = model(input_ids=ids, attention_mask=am).logits
    rows = []
    for i, (p, c) in enumerate(zip(batch.prompt_ids, batch.completion_ids)):
        lp, _ = full_logprobs(logits[i, len(p) - 1 : len(p) + len(c) - 1], torch.tensor(c), temperature)
        rows.append(torch.nn.functional.pad(lp, (0, T - len(c))))
    logp, mask = torch.stack(rows), batch.completion_mask()
    loss, _ = LOSSES[loss_name](LossInputs.from_algo(algo, logp, logp.detach(), batch.advantages, mask,
                                                     norm=LossNorm.from_mask(mask, 16)))
    model.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return loss.item(), grads


@pytest.mark.parametrize("arch,loss_name", [("llama", "grpo"), ("llama", "dapo"), ("llama", "dr_grpo"),
                                            ("llama", "gspo"), ("mixtral", "grpo"), ("mixtral", "gspo")])
def test_shared_prompt_update_equals_padded_batch(tiny_dirs, arch, loss_name):
    model = load_causal_lm(tiny_dirs[arch])
    batch = _rollouts(model.config.vocab_size)
    algo = AlgoConfig(loss=loss_name, epsilon_low=0.2, epsilon_high=0.28, is_correction="none")
    ref_loss, ref_grads = padded_loss_and_grads(model, batch, loss_name, algo, 0.7)
    opt = GradRecorder(model)
    optim = OptimConfig(grad_clip=0.0, micro_batch_tokens=64, shared_prompt=True)
    metrics = policy_update(model, opt, None, batch, algo, optim, temperature=0.7, max_tokens=16)
    assert metrics["nonfinite"] == 0 and metrics["skipped_zero_adv"] == 4 and metrics["micro_batches"] > 1
    assert metrics["loss"] == pytest.approx(ref_loss, rel=1e-4, abs=1e-7)
    assert set(opt.grads) == set(ref_grads)
    for name, g in ref_grads.items():
        scale = float(g.abs().max())
        err = float((opt.grads[name] - g).abs().max())
        assert err <= 1e-4 * scale + 1e-9, f"{name}: max err {err:.3g} vs grad scale {scale:.3g}"
