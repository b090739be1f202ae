"""The policy update for one batch of rollouts.

    plan      pick the sequences that can move the loss, pack them into micro-batches,
              whole-batch normalisers (LossNorm) so accumulation == one big batch
    old       trainer log-probs under the current weights, no grad (skipped when
              num_iterations == 1: then old == the train pass's own log-probs, detached,
              since no optimiser step happens before the single train pass)
    ref       reference log-probs, no grad, only when beta > 0 (LoRA: adapters disabled)
    train     num_iterations x [micro-batches: forward, loss, backward] -> clip -> step

`forward_hook(mb, phase)` (phase in "old", "ref", "train") returns a context manager
entered around each forward of micro-batch `mb` (a PackedMicroBatch); for "train" the
backward runs inside it too (gradient checkpointing re-runs the forward there). If the
object it yields has an `aux_loss` attribute (scalar tensor with grad, set during the
forward), it is added to the loss, weighted by the micro-batch's share of scored tokens.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Optional

import torch

from grpo.batch import RolloutBatch
from grpo.config import AlgoConfig, OptimConfig
from grpo.logprobs import packed_logprobs
from grpo.losses import LOSSES, LossInputs, LossNorm, rollout_is_weights
from grpo.optim import trainable_parameters
from grpo.packing import PackedMicroBatch, auto_row_tokens, pack_micro_batches, padded_equivalent_tokens

ForwardHook = Callable[[PackedMicroBatch, str], ContextManager[Any]]
DEFAULT_ROW_TOKENS = 1024  # without a model to size them (auto_row_tokens): masked attention is O(S^2) per row


@dataclass
class UpdatePlan:
    micro_batches: list[PackedMicroBatch]
    loss_mask: torch.Tensor  # [N, T] 1 on tokens in the loss (all loss sequences, forwarded or not)
    norm: LossNorm
    forwarded: list[int]  # batch indices that are forwarded
    skipped_zero_adv: int


def plan_update(
    batch: RolloutBatch, algo: AlgoConfig, optim: OptimConfig, *, max_tokens: Optional[int] = None,
    skip_zero_advantage: bool = True, max_row_tokens: Optional[int] = None,
) -> UpdatePlan:
    """Which sequences enter the loss, which are forwarded, and how they are packed."""
    mask = batch.completion_mask()  # [N, T]
    in_loss = [
        i for i in range(len(batch))
        if batch.completion_ids[i] and not (algo.mask_truncated and batch.truncated[i])
    ]
    for i in set(range(len(batch))) - set(in_loss):
        mask[i] = 0.0
    # beta = 0 and A = 0: the sequence's loss and gradient are exactly 0 for every variant.
    skip = skip_zero_advantage and algo.beta == 0.0
    forwarded = [i for i in in_loss if not (skip and float(batch.advantages[i]) == 0.0)]
    budget = algo.dr_grpo_normalizer or max_tokens or batch.max_completion_len
    norm = LossNorm(float(len(in_loss)), float(mask.sum()), float(budget))
    rows = max_row_tokens or min(optim.micro_batch_tokens, DEFAULT_ROW_TOKENS)
    mbs = pack_micro_batches(
        batch.prompt_ids, batch.completion_ids, batch.group_ids, include=forwarded,
        shared_prompt=optim.shared_prompt, micro_batch_tokens=optim.micro_batch_tokens, max_row_tokens=rows,
    )
    return UpdatePlan(mbs, mask, norm, forwarded, len(in_loss) - len(forwarded))


def scatter_tokens(values: torch.Tensor, mb: PackedMicroBatch, T: int) -> torch.Tensor:
    """Scored-token values [M] -> padded [n, T] (differentiable)."""
    out = values.new_zeros(mb.seq_index.numel(), T)
    return out.index_put((mb.tok_seq, mb.tok_pos), values)


class MetricAgg:
    """Weighted means; keys ending in _min / _max keep the extreme."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for k, v in metrics.items():
            if k.endswith("_min") or k.endswith("_max"):
                pick = min if k.endswith("_min") else max
                self.sums[k] = pick(self.sums.get(k, v), v)
                self.weights[k] = 1.0
            elif weight > 0:
                self.sums[k] = self.sums.get(k, 0.0) + v * weight
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: self.sums[k] / max(self.weights[k], 1e-12) for k in self.sums}


def _hook(forward_hook: Optional[ForwardHook], mb: PackedMicroBatch, phase: str) -> ContextManager[Any]:
    return forward_hook(mb, phase) if forward_hook is not None else nullcontext()


@torch.no_grad()
def nograd_logprobs(model, plan: UpdatePlan, phase: str, temperature: float, chunk: int,
                    forward_hook: Optional[ForwardHook] = None) -> torch.Tensor:
    """[N, T] log-probs of every forwarded sequence (zeros elsewhere)."""
    out = torch.zeros(plan.loss_mask.shape)
    for mb in plan.micro_batches:
        with _hook(forward_hook, mb, phase):
            logp, _ = packed_logprobs(model, mb, temperature, chunk)
        out[mb.seq_index] = scatter_tokens(logp.float(), mb, out.shape[1])
    return out


def reference_logprobs(model, ref_model, plan: UpdatePlan, temperature: float, chunk: int,
                       forward_hook: Optional[ForwardHook] = None) -> torch.Tensor:
    """Reference log-probs [N, T]: a separate frozen model, or the LoRA policy with adapters disabled."""
    if ref_model is not None:
        return nograd_logprobs(ref_model, plan, "ref", temperature, chunk, forward_hook)
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            return nograd_logprobs(model, plan, "ref", temperature, chunk, forward_hook)
    raise ValueError("beta > 0 needs a reference: pass ref_model (optim.make_reference_model) or use LoRA.")


@dataclass
class PassInputs:
    """What a training pass needs besides the model and the plan. [N, T] tensors are batch-wide."""

    sampler: torch.Tensor  # [N, T] sampler log-probs (NaN = not recorded)
    old: Optional[torch.Tensor] = None  # [N, T]; None = this pass's own log-probs, detached
    ref: Optional[torch.Tensor] = None  # [N, T] when beta > 0
    temperature: float = 1.0
    chunk: int = 8192
    forward_hook: Optional[ForwardHook] = None


def _train_micro_batch(model, mb: PackedMicroBatch, batch: RolloutBatch, plan: UpdatePlan, algo: AlgoConfig,
                       inp: PassInputs) -> tuple[float, dict[str, float]]:
    """Forward + loss + backward of one micro-batch. Returns (loss value, metrics)."""
    T, idx = plan.loss_mask.shape[1], mb.seq_index
    mask = plan.loss_mask[idx]  # [n, T]
    with _hook(inp.forward_hook, mb, "train") as h:
        logp_flat, ent_flat = packed_logprobs(model, mb, inp.temperature, inp.chunk)
        logp = scatter_tokens(logp_flat, mb, T)  # [n, T]
        old = inp.old[idx].to(logp.dtype) if inp.old is not None else logp.detach()
        is_w, is_metrics = rollout_is_weights(old, inp.sampler[idx], mask, algo.is_correction, algo.is_cap, algo.is_min)
        ref = None if inp.ref is None else inp.ref[idx].to(logp.dtype)
        loss, metrics = LOSSES[algo.loss](LossInputs.from_algo(
            algo, logp, old, batch.advantages[idx].to(logp.dtype), mask, norm=plan.norm, ref_logp=ref, is_weights=is_w))
        aux = getattr(h, "aux_loss", None)
        if aux is not None:  # e.g. MoE load balancing, per micro-batch: weight by its token share
            loss = loss + aux * (float(mask.sum()) / max(plan.norm.num_tokens, 1.0))
        value = float(loss.detach())
        if math.isfinite(value):
            loss.backward()  # inside the hook: checkpoint recomputes must see the same routing
    with torch.no_grad():
        ent = scatter_tokens(ent_flat.float(), mb, T)
        metrics["entropy"] = float((ent * mask).sum()) / max(float(mask.sum()), 1.0)
    return value, {**metrics, **is_metrics}


def accumulate_gradients(model, batch: RolloutBatch, plan: UpdatePlan, algo: AlgoConfig, inp: PassInputs,
                         agg: Optional[MetricAgg] = None) -> float:
    """One pass over all micro-batches, gradients summed into .grad (== the full-batch gradient).
    Returns the full-batch loss, NaN as soon as a micro-batch loss is non-finite (then it stops)."""
    total = 0.0
    for mb in plan.micro_batches:
        value, metrics = _train_micro_batch(model, mb, batch, plan, algo, inp)
        if not math.isfinite(value):
            return float("nan")
        total += value
        if agg is not None:
            agg.add(metrics, metrics.pop("tokens"))
    return total


def _step(model, optimizer, grad_clip: float, loss_finite: bool, dist=None) -> tuple[float, bool]:
    """Clip and step unless the loss or the gradient norm is non-finite. Returns (grad norm, stepped).
    With `dist` (data parallel), gradients are summed over ranks first and every rank agrees on
    whether the step is taken."""
    params = trainable_parameters(model)
    if dist is not None and dist.enabled:
        loss_finite = dist.sum_floats([0.0 if loss_finite else 1.0])[0] == 0.0
        if loss_finite:
            dist.all_reduce_grads(params)
    grad_norm = float("nan")
    if loss_finite:
        max_norm = grad_clip if grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm, error_if_nonfinite=False))
    if not (loss_finite and math.isfinite(grad_norm)):
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, False
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, True


def _zero_gradient_steps(model, optimizer, scheduler, iterations: int) -> dict[str, float]:
    """The update when the gradient is exactly 0 (beta = 0, every advantage 0).

    Not forwarding zero-advantage sequences is an exact optimisation; skipping the step would
    not be: AdamW still moves the weights by its momentum (and decays them), and the schedule
    counts the step, as in TRL and veRL. Zero gradients are materialised because AdamW leaves
    parameters whose .grad is None untouched."""
    lr = float(optimizer.param_groups[0]["lr"])
    for _ in range(iterations):
        for p in trainable_parameters(model):
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    return {"zero_gradient_step": 1.0, "lr": lr, "loss": 0.0, "grad_norm": 0.0, "iterations": float(iterations)}


def _token_counts(batch: RolloutBatch, plan: UpdatePlan) -> dict[str, float]:
    mbs = plan.micro_batches
    return {
        "tokens": float(sum(int(mb.tok_seq.numel()) for mb in mbs)),  # scored completion tokens
        "unique_tokens": float(sum(mb.num_tokens for mb in mbs)),  # real tokens forwarded per pass
        "slot_tokens": float(sum(mb.num_slots for mb in mbs)),  # incl. row padding
        "padded_tokens": float(padded_equivalent_tokens(batch.prompt_ids, batch.completion_ids, plan.forwarded)),
        "micro_batches": float(len(mbs)),
        "sequences": float(len(plan.forwarded)),
        "skipped_zero_adv": float(plan.skipped_zero_adv),
    }


def policy_update(
    model, optimizer, scheduler, batch: RolloutBatch, algo_cfg: AlgoConfig, optim_cfg: OptimConfig,
    ref_model=None, temperature: float = 1.0, forward_hook: Optional[ForwardHook] = None, *,
    max_tokens: Optional[int] = None, force_old_pass: bool = False, dist=None,
) -> dict[str, float]:
    """One GRPO update on `batch` (num_iterations optimiser steps, one scheduler step). Returns metrics.

    temperature: the rollout temperature (algo_cfg.temperature overrides it when set).
    max_tokens: rollout.max_tokens, Dr. GRPO's constant (algo_cfg.dr_grpo_normalizer overrides it).
    force_old_pass: run the no-grad "old" pass even when num_iterations == 1 (e.g. R2 routing
    replay records the old routing there).
    dist: a grpo.distributed.Dist for data parallelism: `batch` is this rank's share of the
    global batch; loss normalisers are global and gradients are summed over ranks, so the
    update equals the single-process update on the global batch.
    metrics["nonfinite"] == 1: a NaN/Inf loss or gradient norm; grads were zeroed and no step was
    taken (the caller counts consecutive ones against optim.max_nonfinite_steps).
    """
    t0 = time.perf_counter()
    algo = algo_cfg
    temp = algo.temperature if algo.temperature is not None else temperature
    rows = auto_row_tokens(model, optim_cfg.micro_batch_tokens)
    plan = plan_update(batch, algo, optim_cfg, max_tokens=max_tokens, max_row_tokens=rows)
    out: dict[str, float] = {**_token_counts(batch, plan), "nonfinite": 0.0, "zero_gradient_step": 0.0}
    n_forwarded = float(len(plan.micro_batches))
    if dist is not None and dist.enabled:
        seqs, toks, n_forwarded = dist.sum_floats([plan.norm.num_sequences, plan.norm.num_tokens, n_forwarded])
        plan.norm = LossNorm(seqs, toks, plan.norm.max_tokens)
    if n_forwarded == 0:  # every rank: nothing carries gradient
        out.update(_zero_gradient_steps(model, optimizer, scheduler, algo.num_iterations))
        out["time/train"] = time.perf_counter() - t0
        return out
    inp = PassInputs(batch.sampler_logp(), temperature=temp, chunk=optim_cfg.logprob_chunk, forward_hook=forward_hook)
    t = time.perf_counter()
    if algo.num_iterations > 1 or force_old_pass:
        inp.old = nograd_logprobs(model, plan, "old", temp, inp.chunk, forward_hook)
    out["time/train_old"] = time.perf_counter() - t
    t = time.perf_counter()
    if algo.beta != 0.0:
        inp.ref = reference_logprobs(model, ref_model, plan, temp, inp.chunk, forward_hook)
    out["time/train_ref"] = time.perf_counter() - t
    t = time.perf_counter()
    model.train()
    optimizer.zero_grad(set_to_none=True)
    agg, losses, norms = MetricAgg(), [], []
    for _ in range(algo.num_iterations):
        loss = accumulate_gradients(model, batch, plan, algo, inp, agg)
        grad_norm, stepped = _step(model, optimizer, optim_cfg.grad_clip, math.isfinite(loss), dist)
        losses.append(loss)
        norms.append(grad_norm)
        if not stepped:
            out["nonfinite"] = 1.0
            break
    out["lr"] = float(optimizer.param_groups[0]["lr"])  # the rate these steps used
    if scheduler is not None and out["nonfinite"] == 0.0:
        scheduler.step()  # once per trainer step: warm-up/cosine count policy updates
    out["time/train_grad"] = time.perf_counter() - t
    out.update(agg.result())
    if dist is not None and dist.enabled:  # each rank holds its share of the global loss
        losses = dist.sum_floats(losses)
    out.update(loss=sum(losses) / len(losses), grad_norm=norms[-1], iterations=float(len(losses)))
    out["train_tokens_per_s"] = out["unique_tokens"] * len(losses) / max(out["time/train_grad"], 1e-9)
    out["time/train"] = time.perf_counter() - t0
    return out
