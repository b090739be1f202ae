"""DAPO dynamic sampling: drop groups whose G rewards are all equal (zero
advantage, no learning signal; unscorable NaN rewards left out, as the advantages
leave them out) and draw more prompts until the batch is full, within a bounded
number of extra generation rounds."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from grpo.advantages import zero_variance_groups

# draw(n) -> (prompt_ids [n], completions [n*G] with prompt_index 0..n-1, scores [n*G])
DrawFn = Callable[[int], tuple[list[int], list, torch.Tensor]]


def _informative(scores: torch.Tensor, G: int) -> list[int]:
    """Indices of the groups with a learning signal. scores: [B*G], contiguous groups."""
    flat = zero_variance_groups(scores, G).view(-1, G)[:, 0]  # [B]
    return [b for b in range(flat.numel()) if not flat[b]]


def refill_zero_variance_groups(prompt_ids: list[int], completions: list, scores: torch.Tensor, G: int,
                                max_rounds: int, draw: DrawFn) -> tuple[list[int], list, torch.Tensor, dict]:
    """Return a batch of (up to) len(prompt_ids) informative groups, renumbered 0..B-1.

    If the rounds run out before the batch is full, the batch is topped up with
    zero-variance groups again (they contribute no gradient but keep shapes and
    the token budget predictable); the metrics say how many.
    """
    target = len(prompt_ids)
    kept: list[tuple[int, list, torch.Tensor]] = []
    dropped: list[tuple[int, list, torch.Tensor]] = []

    def split(ids: list[int], comps: list, sc: torch.Tensor) -> None:
        good = set(_informative(sc, G))
        for b, pid in enumerate(ids):
            item = (pid, comps[b * G:(b + 1) * G], sc[b * G:(b + 1) * G])
            (kept if b in good else dropped).append(item)

    split(prompt_ids, completions, scores)
    rounds = 0
    while len(kept) < target and rounds < max_rounds:
        rounds += 1
        split(*draw(target - len(kept)))
    filler = max(0, target - len(kept))
    chosen = kept[:target] + dropped[:filler]
    out_ids, out_comps, out_scores = [], [], []
    for new_index, (pid, comps, sc) in enumerate(chosen):
        out_ids.append(pid)
        out_comps += [dataclasses.replace(c, prompt_index=new_index) for c in comps]
        out_scores.append(sc)
    metrics = {"dynamic_sampling/rounds": rounds, "dynamic_sampling/informative_groups": min(len(kept), target),
               "dynamic_sampling/filler_groups": filler}
    return out_ids, out_comps, torch.cat(out_scores), metrics
