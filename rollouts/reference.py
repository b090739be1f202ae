"""Reference numbers from a transformers forward, to check an engine against.

`completion_logprobs` is the definition every engine's `Completion.logprobs`
must match: log-softmax(logits / temperature) at each completion token, under
a teacher-forced forward of prompt + completion (temperature 0 counts as 1).
"""

from __future__ import annotations

from typing import Sequence

from rollouts.types import Completion


def completion_logprobs(model, completions: Sequence[Completion], temperature: float) -> list[list[float]]:
    """Per-token logprobs of each completion's tokens under `model` (one sequence at a time)."""
    import torch

    t = temperature if temperature > 0 else 1.0
    out = []
    device = next(model.parameters()).device
    with torch.no_grad():
        for c in completions:
            ids = torch.tensor([c.prompt_ids + c.completion_ids], device=device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()  # [P+C, V]
            p = len(c.prompt_ids)
            lp = torch.log_softmax(logits[p - 1 : -1] / t, dim=-1)  # row j predicts completion token j
            out.append(lp.gather(1, torch.tensor(c.completion_ids, device=device)[:, None])[:, 0].tolist())
    return out


def max_logprob_error(model, completions: Sequence[Completion], temperature: float) -> float:
    """Largest |engine logprob - reference logprob| over all completion tokens."""
    ref = completion_logprobs(model, completions, temperature)
    return max((abs(a - b) for c, r in zip(completions, ref) for a, b in zip(c.logprobs, r)), default=0.0)
