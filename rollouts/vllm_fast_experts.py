"""Fast path for MoE experts on vLLM-CPU: trainer's fused experts -> prepacked kernel weights.

The generic update (checkpoint names -> `reload_weights`) moves each expert
weight four times: transformers' reverse conversion makes per-expert copies,
vLLM's layerwise reload loads them into a fresh layer, prepacks, and copies the
result back. Experts are ~85% of an upcycled MoE's parameters, so we write them
directly instead: transformers 5 keeps `experts.gate_up_proj` [E, 2I, H] as
cat(gate, up) and `experts.down_proj` [E, H, I], exactly vLLM's unpacked `w13`
/ `w2` layout, so one prepack pass (`torch.ops._C.prepack_moe_weight`, what the
CPU experts run after loading) writes the trainer's tensors into the kernel's
storage. Layers are matched by decoder-layer index, and only where the shapes
agree and the layer has no bias or padding; everything else takes the generic
path. The result is checked against transformers in the integration tests.
"""

from __future__ import annotations

import re

from rollouts.vllm_private import (
    cpu_moe_kernel,
    layer_index,
    padded_intermediate_size,
    prepack_moe_weight,
    uses_zentorch,
)

_FUSED = re.compile(r"(?:^|\.)layers\.(\d+)\..*experts\.(gate_up_proj|down_proj)$")


class CPUExpertWriter:
    def __init__(self, model):
        self.layers: dict[int, tuple[object, str]] = {}  # layer index -> (routed-experts module, isa)
        for name, module in model.named_modules():
            found = cpu_moe_kernel(module)
            experts = found[1] if found is not None else None
            if experts is None or not hasattr(experts, "isa"):
                continue
            if uses_zentorch(experts) or hasattr(module, "w13_bias"):
                continue
            if not (hasattr(module, "w13_weight") and hasattr(module, "w2_weight")):
                continue
            padded, own = padded_intermediate_size(experts)
            if padded != own:
                continue  # kernel weights are padded: not the trainer's layout
            self.layers[layer_index(name)] = (module, experts.isa)

    def split(self, named: list[tuple[str, object]]) -> tuple[dict[int, dict[str, object]], list[tuple[str, object]]]:
        """(fused expert tensors this writer takes, by layer; everything else)."""
        fused: dict[int, dict[str, object]] = {}
        for name, t in named:
            m = _FUSED.search(name)
            if m and int(m.group(1)) in self.layers:
                fused.setdefault(int(m.group(1)), {})[m.group(2)] = t
        taken: dict[int, dict[str, object]] = {}
        for layer, parts in fused.items():
            module, _ = self.layers[layer]
            if (set(parts) == {"gate_up_proj", "down_proj"}
                    and tuple(parts["gate_up_proj"].shape) == tuple(module.w13_weight.shape)
                    and tuple(parts["down_proj"].shape) == tuple(module.w2_weight.shape)):
                taken[layer] = parts
        keep = [(n, t) for n, t in named
                if not ((m := _FUSED.search(n)) and int(m.group(1)) in taken)]
        return taken, keep

    def write(self, taken: dict[int, dict[str, object]]) -> None:
        import torch

        with torch.no_grad():
            for layer, parts in taken.items():
                module, isa = self.layers[layer]
                for src, dst in ((parts["gate_up_proj"], module.w13_weight), (parts["down_proj"], module.w2_weight)):
                    src = src.detach().to(device=dst.device, dtype=dst.dtype).contiguous()
                    prepack_moe_weight(src, dst.data, isa)  # [E, ...] -> kernel layout, in place
