"""Find the MoE router modules of a transformers v5 model and recompute their gate weights.

In transformers v5 every supported MoE block calls a router module whose
`forward(hidden [S, H])` returns `(router_logits [S, E], top_k_weights [S, k],
top_k_index [S, k])`, with S = B*T (hidden states flattened in input order). That
module is our hook point: replacing its output changes which experts run and with
which weights, and nothing else.

Gate weights for *given* expert indices mirror each router's own formula, so a
row replayed with the indices the router would have picked itself gets the
exact same weights:

- softmax routers (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE):
  `softmax(logits.float()).gather(idx)`, renormalised over the k picks when the
  model renormalises (Mixtral always, the others iff `norm_topk_prob`).
- DeepSeek-V3: `sigmoid(logits).gather(idx)`, renormalised iff `norm_topk_prob`,
  times `routed_scaling_factor`. The correction bias and the group limit only
  shape the *selection*, so they drop out when the selection is given.
- GPT-OSS: softmax over the k selected logits.

Layer order: `moe_layers` lists routers in module order, i.e. decoder-layer
order, skipping dense layers (DeepSeek `first_k_dense_replace`, Qwen
`mlp_only_layers` / `decoder_sparse_step`): index l of the route axis is the l-th
MoE layer, matching `Completion.routed_experts`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from grpo.errors import ConfigError

ScoreKind = Literal["softmax", "sigmoid", "softmax_of_topk"]

# Router class name -> how its gate weights are computed from logits. Exact
# names only: a subclass may change `forward`, so it must be checked and listed.
SUPPORTED_ROUTERS: dict[str, ScoreKind] = {
    "MixtralTopKRouter": "softmax",
    "Qwen2MoeTopKRouter": "softmax",
    "Qwen3MoeTopKRouter": "softmax",
    "OlmoeTopKRouter": "softmax",
    "DeepseekV3TopkRouter": "sigmoid",
    "GptOssTopKRouter": "softmax_of_topk",
}
# Classes whose routers renormalise the top-k weights unconditionally.
_ALWAYS_RENORM = {"MixtralTopKRouter"}

_MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
_MOE_CLASS_HINT = re.compile(r"(Router|Gating|Experts|SparseMoe|MoeBlock|Moe$|MoE$)")
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class RouterInfo:
    """One MoE layer's router and the facts replay needs about it."""

    name: str  # module path, e.g. "model.layers.3.mlp.gate"
    module: nn.Module
    kind: ScoreKind
    num_experts: int
    top_k: int
    decoder_layer: int  # index among *all* decoder layers (vLLM's layer axis)


def _looks_moe(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    if cfg is not None:
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        if any((getattr(text_cfg, k, 0) or 0) > 0 for k in _MOE_CONFIG_KEYS):
            return True
    return any(_MOE_CLASS_HINT.search(type(m).__name__) for m in model.modules())


def _unsupported_error(model: nn.Module) -> ConfigError:
    suspects = sorted({type(m).__name__ for m in model.modules() if _MOE_CLASS_HINT.search(type(m).__name__)})
    return ConfigError(
        f"{type(model).__name__} looks like a Mixture-of-Experts model but none of its modules is a router "
        f"class routing replay supports (found: {', '.join(suspects) or 'none'}). Supported router classes: "
        f"{', '.join(SUPPORTED_ROUTERS)} (transformers v5 modeling code). Set moe.routing_replay=none, or "
        f"add the router to grpo/moe/routers.py:SUPPORTED_ROUTERS after checking its forward."
    )


def _num_experts(module: nn.Module) -> int:
    return int(module.weight.shape[0])


def moe_routers(model: nn.Module) -> list[RouterInfo]:
    """Routers of the MoE layers in layer order; [] for a dense model.

    Raises ConfigError for a model that is MoE but has no supported router.
    """
    found: list[RouterInfo] = []
    for name, module in model.named_modules():
        kind = SUPPORTED_ROUTERS.get(type(module).__name__)
        if kind is None:
            continue
        match = _LAYER_INDEX.search(name + ".")
        layer = int(match.group(1)) if match else len(found)
        found.append(RouterInfo(name, module, kind, _num_experts(module), int(module.top_k), layer))
    if not found and _looks_moe(model):
        raise _unsupported_error(model)
    return found


def moe_layers(model: nn.Module) -> list[nn.Module]:
    """Router modules of the MoE layers, in layer order (dense layers skipped)."""
    return [r.module for r in moe_routers(model)]


def moe_layer_indices(model: nn.Module) -> list[int]:
    """Decoder-layer index of each MoE layer (e.g. [1, 2] for DeepSeek with 1 dense layer first)."""
    return [r.decoder_layer for r in moe_routers(model)]


def renormalises(router: nn.Module) -> bool:
    """Whether the router rescales its k gate weights to sum to one."""
    if type(router).__name__ in _ALWAYS_RENORM:
        return True
    return bool(getattr(router, "norm_topk_prob", False))


def gate_weights(router: nn.Module, kind: ScoreKind, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gate weights [S, k] (float32, differentiable in `logits`) for given experts idx [S, k]."""
    if kind == "softmax":
        w = F.softmax(logits.float(), dim=-1).gather(-1, idx)  # [S, k]
        if renormalises(router):
            w = w / w.sum(dim=-1, keepdim=True)
        return w
    if kind == "sigmoid":
        w = logits.float().sigmoid().gather(-1, idx)
        if renormalises(router):
            w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)  # same epsilon as DeepseekV3TopkRouter
        return w * float(getattr(router, "routed_scaling_factor", 1.0))
    if kind == "softmax_of_topk":
        return F.softmax(logits.gather(-1, idx).float(), dim=-1)
    raise ValueError(f"unknown router score kind {kind!r}")


def router_probs(kind: ScoreKind, logits: torch.Tensor) -> torch.Tensor:
    """Per-expert routing probabilities [S, E] used by the balance loss.

    Softmax routers: softmax(logits). Sigmoid routers (DeepSeek-V3): the sigmoid
    scores normalised to sum to one, as in DeepSeek-V3's sequence-wise balance loss.
    """
    if kind == "sigmoid":
        s = logits.float().sigmoid()
        return s / s.sum(dim=-1, keepdim=True)
    return F.softmax(logits.float(), dim=-1)
