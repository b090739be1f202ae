"""Our packed, shared-prompt, micro-batched loss == TRL 1.16 `GRPOTrainer.compute_loss`.

Same tiny model, same rollouts, rewards -> advantages, old / reference log-probs
(perturbed so the clip and the KL term are active) and settings; TRL runs its padded
batch through its own fused LM head. Loss and every parameter gradient must agree
within 1e-4 (relative to the largest gradient entry of the parameter). TRL's vLLM
IS correction is off (no vLLM in TRL here), so ours is "none" too.
"""

import sys
import tempfile
import warnings

import pytest
import torch
from datasets import Dataset

from grpo.advantages import compute_advantages
from grpo.batch import RolloutBatch
from grpo.config import AlgoConfig, OptimConfig
from grpo.losses import LOSSES
from grpo.models.loader import load_causal_lm, load_tokenizer
from grpo.update import PassInputs, accumulate_gradients, nograd_logprobs, plan_update
from tests.trl_inputs import grads_of, trl_inputs

G, MAX_LEN, TEMP = 4, 16, 0.7


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trl_classes():
    # TRL only probes vLLM, but importing it costs ~10 s: hide it while TRL imports.
    hide = "vllm" not in sys.modules
    if hide:
        sys.modules["vllm"] = None  # find_spec() -> None: TRL sees no vLLM
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from trl import GRPOConfig, GRPOTrainer
    finally:
        if hide:
            del sys.modules["vllm"]
    return GRPOConfig, GRPOTrainer


def rollouts(V: int, pad_id: int) -> RolloutBatch:
    g = torch.Generator().manual_seed(1)
    prompts, comps, gids = [], [], []
    for gi in range(3):
        P = torch.randint(5, V, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        for _ in range(G):
            n = int(torch.randint(2, MAX_LEN + 1, (1,), generator=g))
            comps.append(torch.randint(5, V, (n,), generator=g).tolist())
            prompts.append(P)
            gids.append(gi)
    rewards = torch.rand(len(comps), generator=g)
    adv = compute_advantages(rewards, gids, "group")
    return RolloutBatch(prompts, comps, [[] for _ in comps], adv, gids, [False] * len(comps))


CASES = {  # ours: AlgoConfig    TRL: loss_type, importance_sampling_level (+ use_bias_correction_kl = kl_ratio)
    "grpo": (AlgoConfig(loss="grpo", epsilon_low=0.2, epsilon_high=0.2), "grpo", "token"),
    "dapo+kl": (AlgoConfig(loss="dapo", epsilon_low=0.2, epsilon_high=0.28, beta=0.04), "dapo", "token"),
    "dapo+kl_ratio": (AlgoConfig(loss="dapo", epsilon_low=0.2, epsilon_high=0.28, beta=0.04, kl_ratio=True),
                      "dapo", "token"),
    "dr_grpo": (AlgoConfig(loss="dr_grpo", epsilon_low=0.2, epsilon_high=0.2), "dr_grpo", "token"),
    "gspo+kl": (AlgoConfig(loss="gspo", gspo_epsilon_low=0.02, gspo_epsilon_high=0.03, beta=0.04, kl_ratio=True),
                "grpo", "sequence"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_gradients_match_trl(tiny_dirs, trl_classes, case):
    GRPOConfig, GRPOTrainer = trl_classes
    algo, trl_loss, level = CASES[case]
    algo.is_correction = "none"
    folder = tiny_dirs["llama"]
    model, tok = load_causal_lm(folder), load_tokenizer(folder)
    batch = rollouts(model.config.vocab_size, tok.pad_token_id)

    # old / ref log-probs: the current ones, perturbed so clipping and KL are non-trivial
    optim = OptimConfig(micro_batch_tokens=48, shared_prompt=True, logprob_chunk=37)
    plan = plan_update(batch, algo, optim, max_tokens=MAX_LEN)
    assert len(plan.micro_batches) > 1
    cur = nograd_logprobs(model, plan, "old", TEMP, 64)
    g = torch.Generator().manual_seed(2)
    mask = batch.completion_mask()
    old = cur + 0.15 * torch.randn(cur.shape, generator=g) * mask
    ref = (cur + 0.3 * torch.randn(cur.shape, generator=g) * mask) if algo.beta else None

    eps = LOSSES[algo.loss].clip_range(algo)
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=len(batch), num_generations=G,
        max_completion_length=MAX_LEN, loss_type=trl_loss, importance_sampling_level=level, beta=algo.beta,
        temperature=TEMP, epsilon=eps[0], epsilon_high=eps[1], report_to=[], use_cpu=True, save_strategy="no",
        bf16=False, gradient_checkpointing=False, use_bias_correction_kl=algo.kl_ratio,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=args, train_dataset=Dataset.from_dict({"prompt": ["x"]}),
                              processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1  # set by the HF loop during training
    model.train()
    model.zero_grad(set_to_none=True)
    trl_loss_value = trainer.compute_loss(model, trl_inputs(batch, tok.pad_token_id, old, ref))
    trl_loss_value.backward()
    trl_grads = grads_of(model)

    ours = accumulate_gradients(model, batch, plan, algo, PassInputs(
        sampler=batch.sampler_logp(), old=old, ref=ref, temperature=TEMP, chunk=optim.logprob_chunk))
    our_grads = grads_of(model)

    assert ours == pytest.approx(float(trl_loss_value), rel=1e-4, abs=1e-7)
    clipped = trainer._metrics["train"]["clip_ratio/region_mean"][-1]
    assert clipped > 0.0  # the perturbation makes the clip matter
    assert set(our_grads) == set(trl_grads)
    for name, tg in trl_grads.items():
        err, scale = float((our_grads[name] - tg).abs().max()), float(tg.abs().max())
        assert err <= 1e-4 * scale + 1e-9, f"{name}: max err {err:.3g}, grad scale {scale:.3g}"
