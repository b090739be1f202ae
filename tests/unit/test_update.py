"""policy_update: accumulation, NaN guard, iterations, reference/KL, LoRA, hooks; optim helpers."""

import math
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from grpo.batch import RolloutBatch
from grpo.config import AlgoConfig, LoraConfig, ModelConfig, OptimConfig
from grpo.models.loader import load_causal_lm
from grpo.optim import (
    build_adamw,
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    make_reference_model,
    prepare_model,
)
from grpo.update import nograd_logprobs, plan_update, policy_update
from rollouts.types import Completion


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread is ~50x faster than two when the cores are shared (OpenMP spin)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def llama(tiny_dirs):
    return load_causal_lm(tiny_dirs["llama"])


def make_batch(V, seed=0, groups=3, G=4, truncate_first=False):
    g = torch.Generator().manual_seed(seed)
    comps = []
    for gi in range(groups):
        P = torch.randint(5, V, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g).tolist()
        for k in range(G):
            C = torch.randint(5, V, (int(torch.randint(2, 14, (1,), generator=g)),), generator=g).tolist()
            lp = (torch.rand(len(C), generator=g) * -3).tolist()
            fr = "length" if truncate_first and gi == 0 and k == 0 else "stop"
            comps.append(Completion(gi, P, C, lp, "", fr))
    adv = torch.randn(len(comps), generator=g)
    return RolloutBatch.from_completions(comps, adv)


class GradRecorder:
    def __init__(self, model):
        self.model, self.param_groups, self.grads = model, [{"lr": 0.0}], None

    def step(self):
        self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.mark.parametrize("loss", ["grpo", "dapo"])
def test_micro_batch_accumulation_equals_one_big_batch(llama, loss):
    batch = make_batch(llama.config.vocab_size)
    algo = AlgoConfig(loss=loss, is_correction="token_truncate")
    grads, losses = [], []
    for budget in (10_000, 40):
        opt = GradRecorder(llama)
        m = policy_update(llama, opt, None, batch, algo, OptimConfig(grad_clip=0.0, micro_batch_tokens=budget))
        grads.append(opt.grads)
        losses.append(m["loss"])
        assert m["micro_batches"] == 1 or budget == 40
    assert m["micro_batches"] >= 3
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=0)


def test_nan_loss_skips_update_and_is_reported(llama):
    batch = make_batch(llama.config.vocab_size)
    batch.advantages[3] = float("nan")
    opt, sched = build_optimizer(llama, OptimConfig(lr=1e-2, warmup_steps=2), total_steps=10)
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    m = policy_update(llama, opt, sched, batch, AlgoConfig(), OptimConfig())
    assert m["nonfinite"] == 1.0 and math.isnan(m["loss"])
    for n, p in llama.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None
    assert not opt.state and sched.last_epoch == 0  # no AdamW step, no schedule step


def test_nonfinite_grad_norm_skips_update(llama):
    batch = make_batch(llama.config.vocab_size)
    opt = build_adamw(llama, OptimConfig(lr=1e-2))
    p0 = next(llama.parameters())
    h = p0.register_hook(lambda g: g * float("inf"))
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    try:
        m = policy_update(llama, opt, None, batch, AlgoConfig(), OptimConfig())
    finally:
        h.remove()
    assert m["nonfinite"] == 1.0 and math.isfinite(m["loss"]) and not math.isfinite(m["grad_norm"])
    assert all(torch.equal(p, before[n]) for n, p in llama.named_parameters())


def test_all_zero_advantage_batch_takes_the_adamw_step_of_a_zero_gradient(llama):
    """Skipping the forward of zero-advantage sequences must not change the trajectory: with every
    advantage 0 the gradient is 0 and AdamW still steps (momentum, weight decay), schedule included."""
    import copy

    cfg = OptimConfig(lr=1e-3, weight_decay=0.1, warmup_steps=3)
    opt, sched = build_optimizer(llama, cfg, total_steps=10)
    policy_update(llama, opt, sched, make_batch(llama.config.vocab_size), AlgoConfig(), cfg)  # Adam state
    twin = copy.deepcopy(llama)
    twin_opt, twin_sched = build_optimizer(twin, cfg, total_steps=10)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the tensors
    twin_sched.load_state_dict(sched.state_dict())
    for p in twin.parameters():  # the plain way: a zero gradient, one step
        p.grad = torch.zeros_like(p)
    twin_opt.step()
    twin_sched.step()

    zero = make_batch(llama.config.vocab_size, seed=1)
    zero.advantages.zero_()
    m = policy_update(llama, opt, sched, zero, AlgoConfig(), cfg)
    assert m["zero_gradient_step"] == 1.0 and m["micro_batches"] == 0 and m["nonfinite"] == 0.0
    assert sched.last_epoch == twin_sched.last_epoch == 2
    for p, q in zip(llama.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=0, rtol=0)
        assert p.grad is None
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    policy_update(llama, opt, sched, zero, AlgoConfig(), cfg)
    assert all(not torch.equal(p, before[n]) for n, p in llama.named_parameters())  # momentum keeps moving


def test_update_moves_weights_iterations_and_metrics(llama):
    batch = make_batch(llama.config.vocab_size, truncate_first=True)
    opt, sched = build_optimizer(llama, OptimConfig(lr=1e-3, warmup_steps=4), total_steps=10)
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    calls = []

    @contextmanager
    def hook(mb, phase):
        calls.append(phase)
        yield SimpleNamespace(aux_loss=None)

    algo = AlgoConfig(loss="dapo", num_iterations=2, mask_truncated=True, epsilon_high=0.28)
    m = policy_update(llama, opt, sched, batch, algo, OptimConfig(micro_batch_tokens=64), forward_hook=hook)
    assert m["nonfinite"] == 0 and m["iterations"] == 2
    assert sched.last_epoch == 1 and m["lr"] == pytest.approx(1e-3 / 4)  # one schedule step per trainer step
    assert sum(not torch.equal(p, before[n]) for n, p in llama.named_parameters()) == len(before)
    n_mb = int(m["micro_batches"])
    assert calls == ["old"] * n_mb + ["train"] * 2 * n_mb
    assert m["sequences"] == len(batch) - 1  # the truncated completion is out of the loss and not forwarded
    # iteration 2 runs after a step: ratios leave 1, the clip can trigger
    assert m["ratio_max"] > 1.0 > m["ratio_min"]
    for key in ("loss", "entropy", "clip_low_frac", "clip_high_frac", "is_weight_mean", "rollout_kl_k3",
                "rollout_logp_absdiff", "grad_norm", "unique_tokens", "padded_tokens", "time/train", "lr"):
        assert key in m and math.isfinite(m[key]), key
    assert m["unique_tokens"] < m["padded_tokens"]


def test_single_iteration_skips_old_pass_and_trainer_sampler_match_gives_unit_weights(llama):
    batch = make_batch(llama.config.vocab_size)
    # sampler log-probs equal to the trainer's -> IS weights 1 and rollout KL 0
    plan = plan_update(batch, AlgoConfig(), OptimConfig())
    old = nograd_logprobs(llama, plan, "old", temperature=1.0, chunk=8192)
    batch.sampler_logprobs = [old[i, : len(c)].tolist() for i, c in enumerate(batch.completion_ids)]
    phases = []

    @contextmanager
    def hook(mb, phase):
        phases.append(phase)
        yield None

    m = policy_update(llama, GradRecorder(llama), None, batch, AlgoConfig(), OptimConfig(), forward_hook=hook)
    assert set(phases) == {"train"}
    assert m["rollout_kl_k3"] < 1e-10 and m["is_weight_mean"] == pytest.approx(1.0, abs=1e-5)


def test_reference_model_kl_and_aux_loss_from_hook(llama):
    batch = make_batch(llama.config.vocab_size)
    ref = make_reference_model(llama)
    assert not any(p.requires_grad for p in ref.parameters())
    opt = build_adamw(llama, OptimConfig(lr=1e-3))

    class AuxHook:
        def __call__(self, mb, phase):
            return self.ctx(phase)

        @contextmanager
        def ctx(self, phase):
            state = SimpleNamespace(aux_loss=None)
            if phase == "train":  # a differentiable extra term, as the MoE aux loss would be
                state.aux_loss = sum(p.sum() for p in llama.lm_head.parameters()) * 0.0 + 1.0
            yield state

    algo = AlgoConfig(beta=0.1, num_iterations=2)
    m = policy_update(llama, opt, None, batch, algo, OptimConfig(), ref_model=ref, forward_hook=AuxHook())
    assert m["kl"] > 0.0 and m["nonfinite"] == 0  # iteration 2 differs from the reference
    m1 = policy_update(llama, GradRecorder(llama), None, batch, AlgoConfig(beta=0.1), OptimConfig(),
                       ref_model=ref, forward_hook=AuxHook())
    m0 = policy_update(llama, GradRecorder(llama), None, batch, AlgoConfig(beta=0.1), OptimConfig(), ref_model=ref)
    assert m1["loss"] == pytest.approx(m0["loss"] + 1.0, abs=1e-6)  # token shares of the aux term sum to 1
    with pytest.raises(ValueError, match="reference"):
        policy_update(llama, GradRecorder(llama), None, batch, AlgoConfig(beta=0.1), OptimConfig())


def test_lora_reference_is_the_base_with_adapters_disabled(tiny_dirs):
    model = load_causal_lm(tiny_dirs["llama"])
    cfg = ModelConfig(lora=LoraConfig(enabled=True, r=4, alpha=8), gradient_checkpointing=True)
    policy = prepare_model(model, cfg)
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    batch = make_batch(policy.config.vocab_size)
    opt = build_adamw(policy, OptimConfig(lr=1e-2))
    m1 = policy_update(policy, opt, None, batch, AlgoConfig(beta=0.1), OptimConfig())
    assert m1["kl"] < 1e-10  # LoRA B starts at 0: policy == base
    m2 = policy_update(policy, opt, None, batch, AlgoConfig(beta=0.1), OptimConfig())
    assert m2["kl"] > 1e-8 and m2["nonfinite"] == 0
    with pytest.raises(ValueError, match="LoRA"):
        make_reference_model(policy)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dirs):
    grads = []
    for gc in (False, True):
        model = prepare_model(load_causal_lm(tiny_dirs["mixtral"]), ModelConfig(gradient_checkpointing=gc))
        batch = make_batch(model.config.vocab_size)
        opt = GradRecorder(model)
        policy_update(model, opt, None, batch, AlgoConfig(), OptimConfig(grad_clip=0.0))
        grads.append(opt.grads)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5)


def test_lr_schedule():
    assert [lr_multiplier(s, 2, 10, "constant") for s in (0, 1, 2, 9)] == [0.5, 1.0, 1.0, 1.0]
    # cosine after 2 warm-up steps over 8: step 6 is half way -> 0.5
    assert lr_multiplier(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert lr_multiplier(10, 2, 10, "cosine") == pytest.approx(0.0)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, OptimConfig(warmup_steps=4, schedule="cosine"), total_steps=8)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
