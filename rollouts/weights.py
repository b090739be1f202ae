"""Trainer weights -> the checkpoint-format (name, tensor) pairs vLLM loads.

transformers 5 keeps MoE experts fused in memory (`mlp.experts.gate_up_proj`
[E, 2I, H], `mlp.experts.down_proj` [E, H, I]) while checkpoints and vLLM's
loaders use one tensor per expert (`block_sparse_moe.experts.N.w1.weight` for
Mixtral, `mlp.experts.N.gate_proj.weight` for Qwen-MoE). We do not keep our own
maps: transformers' `revert_weight_conversion` (what `save_pretrained` uses)
does the reverse conversion, driven by a weightless (meta-device) copy of the
architecture. Names already in checkpoint format pass through unchanged.

Wrapper prefixes are stripped: DDP `module.`, torch.compile `_orig_mod.`, and
PEFT `base_model.model.` / `.base_layer`. LoRA factor tensors are dropped, so a
PEFT policy must be pushed with its adapter merged: `policy_weights(model)`
does that merge for the duration of the push.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from grpo.errors import EngineError

_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")
# PEFT: adapter factors are not policy weights once merged into the base layer.
_LORA_PARTS = re.compile(r"\.(lora_[A-Za-z_]+|original_module)\.")


def clean_name(name: str) -> str | None:
    """Strip training-wrapper prefixes; None for tensors that are not model weights."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if name.startswith(p):
                name, changed = name[len(p):], True
    if _LORA_PARTS.search(name):
        return None
    return name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")


class CheckpointNamer:
    """Converts in-memory HF (name, tensor) pairs to checkpoint names for one architecture."""

    def __init__(self, model_dir: str | Path):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(model_dir)
        with torch.device("meta"):  # structure only: no memory, no init cost
            self.skeleton = AutoModelForCausalLM.from_config(cfg)

    def __call__(self, named_tensors: Iterable[tuple[str, object]]) -> list[tuple[str, "object"]]:
        return self.convert(clean_tensors(named_tensors))

    def missing(self, cleaned: list[tuple[str, object]]) -> list[str]:
        """The architecture's parameters (in-memory names; a tied LM head counts once) `cleaned` lacks."""
        have = {name for name, _ in cleaned}
        return [name for name, _ in self.skeleton.named_parameters() if name not in have]

    def convert(self, cleaned: list[tuple[str, object]]) -> list[tuple[str, "object"]]:
        """Checkpoint-format pairs from already cleaned (`clean_tensors`) pairs."""
        from transformers.core_model_loading import revert_weight_conversion

        try:
            out = revert_weight_conversion(self.skeleton, dict(cleaned))
        except Exception as e:  # a shape/name mismatch deep in transformers: say which model
            raise EngineError(
                f"could not convert the trainer's weight names to checkpoint format ({type(e).__name__}: {e}); "
                "are these the parameters of the engine's model?"
            ) from e
        return list(out.items())


def clean_tensors(named_tensors: Iterable[tuple[str, object]]) -> list[tuple[str, "object"]]:
    """Wrapper prefixes stripped, adapter factors dropped, DTensors gathered, autograd detached."""
    out = []
    for name, t in named_tensors:
        clean = clean_name(name)
        if clean is None:
            continue
        if hasattr(t, "full_tensor"):  # FSDP DTensor: gather the full weight
            t = t.full_tensor()
        out.append((clean, t.detach()))
    if not out:
        raise EngineError("update_weights got no tensors: pass model.named_parameters() (or policy_weights(model)).")
    return out


@contextmanager
def policy_weights(model) -> Iterator[list[tuple[str, "object"]]]:
    """The (name, tensor) pairs to push to an engine after an optimiser step.

    Parameters plus persistent buffers (e.g. DeepSeek's router
    `e_score_correction_bias`, which `named_parameters()` misses). For a PEFT
    model the adapter is merged into the base weights while the caller pushes,
    then unmerged, so training continues on the adapter.
    """
    import torch

    is_peft = hasattr(model, "peft_config") and hasattr(model, "merge_adapter")
    if is_peft:
        model.merge_adapter()
    try:
        with torch.no_grad():
            keys = set(model.state_dict().keys())
            items = list(model.named_parameters())
            items += [(n, b) for n, b in model.named_buffers() if n in keys]
        yield items
    finally:
        if is_peft:
            model.unmerge_adapter()
