"""The policy's weights as the engines expect them: plain HF names, adapters merged."""

from __future__ import annotations

from typing import Iterator


def policy_weights_for_engine(policy) -> list[tuple[str, "object"]]:
    """(name, tensor) pairs in transformers' in-memory naming, LoRA merged in.

    For a peft model the adapters are merged into the base weights, read out
    (copied), and unmerged again, so training continues on the adapters.
    """
    if not hasattr(policy, "peft_config"):
        return [(n, p.detach()) for n, p in policy.named_parameters()]
    policy.merge_adapter()
    try:
        return [(n, t.detach().clone()) for n, t in _base_named_weights(policy)]
    finally:
        policy.unmerge_adapter()


def _base_named_weights(peft_model) -> Iterator[tuple[str, "object"]]:
    for name, param in peft_model.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        yield name.replace(".base_layer.", "."), param
