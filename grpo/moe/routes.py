"""Routed-expert arrays: engine formats -> our per-token layout -> replay tensors.

Our per-sequence layout (`rollouts.types.Completion.routed_experts`): int16
[N, L, k] over the N = prompt + completion tokens, L = MoE layers only, row i =
the experts that processed token i, NO_ROUTE (-1) where unrecorded (route live).

vLLM (`enable_return_routed_experts=True`, GPU) returns
`CompletionOutput.routed_experts` as [N-1, num_hidden_layers, k] (uint8/uint16/
int32): the last sampled token is never fed back, so it has no row, and the layer
axis is indexed by *decoder* layer (vLLM's `extract_layer_index`), so dense
layers (DeepSeek `first_k_dense_replace`, Qwen `mlp_only_layers`) hold unwritten
zeros. SGLang's `meta_info.routed_experts` has the same [N-1, ...] shape.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from grpo.errors import ConfigError
from rollouts.types import NO_ROUTE  # -1: no record, route live

ROUTE_DTYPE = np.int16


def from_vllm_routed_experts(
    arr: np.ndarray,
    moe_layer_ids: Sequence[int],
    num_tokens: Optional[int] = None,
) -> np.ndarray:
    """vLLM/SGLang routed experts [N-1, L_any, k] -> our layout [N, L_moe, k] int16.

    moe_layer_ids: decoder-layer index of each MoE layer (`moe_layer_indices(model)`).
    The layer axis may cover all decoder layers (vLLM) or the MoE layers only; the
    last row (the final sampled token, never forwarded) is filled with NO_ROUTE.
    num_tokens: N = len(prompt_ids) + len(completion_ids), checked when given.
    """
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ConfigError(f"routed experts must be [tokens, layers, top_k]; got shape {arr.shape}.")
    n_moe = len(moe_layer_ids)
    if arr.shape[1] == n_moe:
        picked = arr
    elif arr.shape[1] > max(moe_layer_ids, default=-1):
        picked = arr[:, list(moe_layer_ids), :]  # drop dense layers' unwritten rows
    else:
        raise ConfigError(
            f"routed experts have {arr.shape[1]} layers; the model has {n_moe} MoE layers at decoder "
            f"indices {list(moe_layer_ids)}: the engine served a different model?"
        )
    if num_tokens is not None and arr.shape[0] != num_tokens - 1:
        raise ConfigError(
            f"routed experts have {arr.shape[0]} rows; vLLM returns prompt+completion-1 = {num_tokens - 1}."
        )
    out = np.full((arr.shape[0] + 1, n_moe, arr.shape[2]), NO_ROUTE, dtype=ROUTE_DTYPE)
    out[:-1] = picked.astype(ROUTE_DTYPE)  # uint8/uint16/int32 expert ids < 2^15
    return out


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
