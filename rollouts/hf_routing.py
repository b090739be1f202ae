"""Which experts a transformers MoE model routes each token to.

transformers 5 MoE blocks (Mixtral, Qwen2/3-MoE, DeepSeek-V2/3, OLMoE, ...)
all call `self.experts(hidden_states, top_k_index, top_k_weights)` after their
router: a forward pre-hook on those `experts` modules sees the chosen expert
ids [T, k] whatever the routing rule (softmax top-k, sigmoid + bias, grouped).

Layout of a routing array, shared with the vLLM engine: int16
[seq_len, n_moe_layers, top_k]; axis 1 follows the MoE layers in ascending
layer index (`moe_layer_ids`); the k ids of a row are sorted ascending (the
order inside top-k carries no meaning); NO_ROUTE (-1) where nothing was recorded.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np

from rollouts.types import NO_ROUTE

_EXPERTS = re.compile(r"(?:^|\.)layers\.(\d+)\..*experts$")


def moe_modules(model) -> dict[int, object]:
    """{layer index: experts module} of the model's MoE layers."""
    found: dict[int, object] = {}
    for name, module in model.named_modules():
        m = _EXPERTS.search(name)
        if m and int(m.group(1)) not in found:
            found[int(m.group(1))] = module
    return dict(sorted(found.items()))


@contextmanager
def record_expert_choices(model) -> Iterator[dict[int, list]]:
    """Within the block, calls[layer] lists the [T, k] expert ids of each forward."""
    calls: dict[int, list] = {}
    handles = []

    def hook_for(layer: int):
        def hook(module, args, kwargs):
            idx = args[1] if len(args) > 1 else next(v for k, v in kwargs.items() if "ind" in k or "sel" in k)
            calls.setdefault(layer, []).append(idx.detach().to("cpu"))

        return hook

    for layer, module in moe_modules(model).items():
        handles.append(module.register_forward_pre_hook(hook_for(layer), with_kwargs=True))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def hf_routing(model, sequences: Sequence[Sequence[int]], batch_size: int = 8) -> list[np.ndarray]:
    """Routing of each full sequence (prompt + completion) under a teacher-forced forward.

    Returns int16 [len(seq), n_moe_layers, top_k] per sequence; the last token is
    NO_ROUTE, as in the vLLM engine (it is never fed back during sampling).
    Sequences are right-padded in batches: causal attention keeps the real
    positions unaffected by the padding.
    """
    import torch

    layers = list(moe_modules(model))
    out: list[np.ndarray] = []
    device = next(model.parameters()).device
    for start in range(0, len(sequences), batch_size):
        chunk = [list(s[:-1]) for s in sequences[start:start + batch_size]]  # last token never fed
        width = max(len(s) for s in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, s in enumerate(chunk):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        with torch.no_grad(), record_expert_choices(model) as calls:
            model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        per_layer = [calls[layer][0].view(len(chunk), width, -1) for layer in layers]  # each [b, T, k]
        stacked = torch.stack(per_layer, dim=2).sort(dim=-1).values  # [b, T, L, k]
        for i, s in enumerate(chunk):
            arr = np.full((len(s) + 1, len(layers), stacked.shape[-1]), NO_ROUTE, dtype=np.int16)
            arr[: len(s)] = stacked[i, : len(s)].numpy().astype(np.int16)
            out.append(arr)
    return out


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """(agreeing, compared) (token, layer) pairs where both arrays hold a record."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    both = (a[..., 0] != NO_ROUTE) & (b[..., 0] != NO_ROUTE)  # [T, L]
    same = (np.sort(a, -1) == np.sort(b, -1)).all(-1) & both
    return int(same.sum()), int(both.sum())
