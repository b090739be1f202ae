"""Reference numbers from a transformers forward, to check an engine against.

`reference` gives the definitions every engine must match, from one
teacher-forced forward of prompt + completion (right-padded batches):
- logprobs: log-softmax(logits / temperature) at each completion token
  (temperature 0 counts as 1);
- routing: the experts transformers' routers pick for each token (hf_routing.py
  layout), last token NO_ROUTE.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rollouts.types import NO_ROUTE, Completion


def reference(model, completions: Sequence[Completion], temperature: float, batch_size: int = 8
              ) -> tuple[list[list[float]], list[np.ndarray] | None]:
    """(per-token logprobs, routing arrays or None for a dense model) of each completion."""
    import torch

    from rollouts.hf_routing import moe_modules, record_expert_choices

    t = temperature if temperature > 0 else 1.0
    layers = list(moe_modules(model))
    device = next(model.parameters()).device
    logprobs: list[list[float]] = []
    routes: list[np.ndarray] = []
    for start in range(0, len(completions), batch_size):
        chunk = completions[start:start + batch_size]
        seqs = [c.prompt_ids + c.completion_ids for c in chunk]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        with torch.no_grad(), record_expert_choices(model) as calls:
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for i, c in enumerate(chunk):
            p, n = len(c.prompt_ids), len(seqs[i])
            lp = torch.log_softmax(logits[i, p - 1 : n - 1].float() / t, dim=-1)  # row j predicts token j
            logprobs.append(lp.gather(1, torch.tensor(c.completion_ids, device=device)[:, None])[:, 0].tolist())
        if layers:
            picked = torch.stack([calls[layer][0].view(len(seqs), width, -1) for layer in layers], 2).sort(-1).values
            for i, s in enumerate(seqs):
                arr = picked[i, : len(s)].cpu().numpy().astype(np.int16)  # [T, L, k]
                arr[-1] = NO_ROUTE  # never fed back during sampling
                routes.append(arr)
    return logprobs, (routes if layers else None)


def completion_logprobs(model, completions: Sequence[Completion], temperature: float) -> list[list[float]]:
    return reference(model, completions, temperature)[0]


def max_logprob_error(model, completions: Sequence[Completion], temperature: float) -> float:
    """Largest |engine logprob - reference logprob| over all completion tokens."""
    ref = completion_logprobs(model, completions, temperature)
    return max((abs(a - b) for c, r in zip(completions, ref) for a, b in zip(c.logprobs, r)), default=0.0)


def compare(model, completions: Sequence[Completion], temperature: float) -> tuple[float, float | None]:
    """(max |logprob error|, share of (token, layer) routing records agreeing) in one forward."""
    from rollouts.hf_routing import agreement

    ref_lp, ref_routes = reference(model, completions, temperature)
    err = max((abs(a - b) for c, r in zip(completions, ref_lp) for a, b in zip(c.logprobs, r)), default=0.0)
    if ref_routes is None or completions[0].routed_experts is None:
        return err, None
    pairs = [agreement(c.routed_experts, r) for c, r in zip(completions, ref_routes)]
    return err, sum(a for a, _ in pairs) / max(1, sum(n for _, n in pairs))
