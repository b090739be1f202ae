"""Our RolloutBatch as the padded inputs of TRL 1.16's `GRPOTrainer.compute_loss` (shared by the
unit and integration parity tests)."""

from __future__ import annotations

import torch

from grpo.batch import RolloutBatch


def trl_inputs(batch: RolloutBatch, pad_id: int, old: torch.Tensor | None, ref: torch.Tensor | None = None) -> dict:
    """old = None: TRL's single-iteration path (the pass's own log-probs, detached)."""
    N, P = len(batch), max(map(len, batch.prompt_ids))
    prompt_ids = torch.full((N, P), pad_id)
    prompt_mask = torch.zeros(N, P, dtype=torch.long)
    for i, p in enumerate(batch.prompt_ids):  # TRL left-pads prompts
        prompt_ids[i, P - len(p):], prompt_mask[i, P - len(p):] = torch.tensor(p), 1
    mask = batch.completion_mask().long()
    comp = torch.full(mask.shape, pad_id)
    for i, c in enumerate(batch.completion_ids):
        comp[i, : len(c)] = torch.tensor(c)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": comp,
              "completion_mask": mask, "advantages": batch.advantages, "num_items_in_batch": mask.sum(),
              "old_per_token_logps": old}
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    return inputs


def grads_of(model) -> dict[str, torch.Tensor]:
    """Every parameter gradient, cloned; the model's grads are cleared."""
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out
