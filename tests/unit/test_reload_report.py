"""What vLLM reports as not loaded during a weight reload is captured and checked, not muted."""

from __future__ import annotations

import logging

import pytest

from grpo.errors import EngineError
from rollouts.vllm_engine import ReloadReport, reload_report
from rollouts.weights import CheckpointNamer, clean_tensors

INPLACE = logging.getLogger("vllm.model_executor.model_loader.reload.inplace")
LAYERWISE = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
EXPERTS = {"model.layers.0.mlp.experts.w13_weight", "model.layers.0.mlp.experts.w2_weight"}


def emit_like_vllm(names: set[str], layers: list[str]) -> None:
    """The two warnings vLLM 0.32's reload_weights logs (inplace.py, layerwise.py)."""
    for layer in layers:
        LAYERWISE.warning("%s: Failed to load weights", layer)
    INPLACE.warning("Following weights were not loaded from checkpoint: %s", names)


def test_expected_names_pass_and_are_not_printed(caplog):
    caplog.set_level(logging.WARNING)
    with reload_report() as report:
        emit_like_vllm(EXPERTS, ["FusedMoE", "ParallelLMHead"])
        INPLACE.warning("something else")  # other messages are left alone
    assert report.not_loaded == EXPERTS and report.failed_layers == ["FusedMoE", "ParallelLMHead"]
    report.check(EXPERTS, ["ParallelLMHead", "FusedMoE"])
    assert [r.getMessage() for r in caplog.records] == ["something else"]


def test_unexpected_names_are_an_error_naming_them():
    with reload_report() as report:
        emit_like_vllm(EXPERTS | {"model.layers.3.self_attn.o_proj.weight"}, ["FusedMoE", "RowParallelLinear"])
    with pytest.raises(EngineError, match=r"o_proj\.weight\].*\['RowParallelLinear'\]") as e:
        report.check(EXPERTS, ["FusedMoE"])
    assert "w13_weight" not in str(e.value)
    with pytest.raises(EngineError, match=r"layers \['FusedMoE'\]"):  # one more failed layer than expected
        ReloadReport(set(), ["FusedMoE", "FusedMoE"]).check(set(), ["FusedMoE"])


def test_captured_even_when_vllm_logging_is_quieter():
    parent = logging.getLogger("vllm")
    level = parent.level
    parent.setLevel(logging.ERROR)  # VLLM_LOGGING_LEVEL=ERROR
    try:
        with reload_report() as report:
            emit_like_vllm({"lm_head.weight"}, [])
    finally:
        parent.setLevel(level)
    assert report.not_loaded == {"lm_head.weight"}
    assert INPLACE.level == logging.NOTSET and not INPLACE.filters  # left as found


def test_namer_lists_parameters_a_push_lacks(tiny_dirs):
    from grpo.models.loader import load_causal_lm

    folder = tiny_dirs["mixtral"]
    model = load_causal_lm(folder)
    namer = CheckpointNamer(folder)
    full = clean_tensors(model.named_parameters())
    assert namer.missing(full) == []
    drop = "model.layers.0.self_attn.k_proj.weight"
    assert namer.missing([(n, t) for n, t in full if n != drop]) == [drop]
