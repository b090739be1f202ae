"""Routed-expert arrays in our per-token layout -> replay tensors.

The layout (`rollouts.types.Completion.routed_experts`, int16 [N, L_moe, k]) and the
conversion from vLLM's own record (`rollouts.vllm_routing.from_vllm_routed_experts`)
live with the engines that produce them.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rollouts.types import NO_ROUTE  # -1: no record, route live


def to_route_tensor(routes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any stored route array -> int64 tensor (what `RoutingReplay.replay` takes)."""
    if isinstance(routes, torch.Tensor):
        return routes.long()
    return torch.from_numpy(np.asarray(routes).astype(np.int64))


def pad_routes(per_seq: Sequence[np.ndarray | torch.Tensor | None], seq_len: int,
               n_layers: int, top_k: int) -> torch.Tensor:
    """Right-padded batch layout: B sequences -> [B * seq_len, L, k] (padding and
    missing rows = NO_ROUTE), matching `input_ids` [B, seq_len] flattened.

    For packed micro-batches use the packing module's `layout_token_features`.
    """
    out = torch.full((len(per_seq), seq_len, n_layers, top_k), NO_ROUTE, dtype=torch.long)
    for b, routes in enumerate(per_seq):
        if routes is None:
            continue
        r = to_route_tensor(routes)[:seq_len]  # [n_b, L, k]
        out[b, : r.shape[0]] = r
    return out.reshape(-1, n_layers, top_k)
