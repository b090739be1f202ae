"""Prompt encoding (the chat template applied once) and request validation."""

from __future__ import annotations

import pytest

from grpo.errors import EngineError
from rollouts.prompts import check_request, decode_completion, encode_prompts


@pytest.fixture(scope="module")
def tok():
    from grpo.models.tiny import tiny_tokenizer

    return tiny_tokenizer()


def test_text_prompt_is_wrapped_as_one_user_turn(tok):
    [ids] = encode_prompts(tok, ["2+3?"])
    assert tok.decode(ids) == "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    # same tokens as the equivalent chat prompt: the template is applied exactly once
    assert encode_prompts(tok, [[{"role": "user", "content": "2+3?"}]]) == [ids]


def test_chat_false_tokenizes_raw_text(tok):
    [ids] = encode_prompts(tok, ["2+3?"], chat=False)
    assert tok.decode(ids) == "2+3?"


def test_no_generation_prompt(tok):
    [ids] = encode_prompts(tok, ["hi"], add_generation_prompt=False)
    assert not tok.decode(ids).endswith("assistant\n")


def test_chat_prompt_without_template_is_a_clear_error(tok):
    from grpo.models.tiny import tiny_tokenizer

    bare = tiny_tokenizer()
    bare.chat_template = None
    assert encode_prompts(bare, ["hi"]) == [bare("hi")["input_ids"]]  # auto: no template -> raw text
    with pytest.raises(EngineError, match="no chat template"):
        encode_prompts(bare, [[{"role": "user", "content": "hi"}]])
    with pytest.raises(EngineError, match="neither text nor"):
        encode_prompts(tok, [[1, 2, 3]])


def test_group_size_rules():
    with pytest.raises(EngineError, match="group_size=1.*at least 2"):
        check_request([[1, 2]], group_size=1, max_tokens=4, max_model_len=32, temperature=1.0)
    with pytest.raises(EngineError, match="group_size=0"):
        check_request([[1, 2]], group_size=0, max_tokens=4, max_model_len=32, temperature=0.0)
    check_request([[1, 2]], group_size=1, max_tokens=4, max_model_len=32, temperature=0.0)  # greedy eval
    check_request([[1, 2]], group_size=2, max_tokens=4, max_model_len=32)


def test_prompt_longer_than_context_names_the_prompt_and_the_fix():
    with pytest.raises(EngineError) as e:
        check_request([[1] * 5, [1] * 30], group_size=2, max_tokens=8, max_model_len=32)
    msg = str(e.value)
    assert "prompt 1 has 30 tokens" in msg and "leaves room for 24" in msg and "raise max_model_len" in msg
    assert "\n" not in msg
    with pytest.raises(EngineError, match="no room for the prompt"):
        check_request([[1]], group_size=2, max_tokens=32, max_model_len=32)
    with pytest.raises(EngineError, match="empty"):
        check_request([[]], group_size=2, max_tokens=4, max_model_len=32)


def test_decode_drops_special_tokens(tok):
    ids = tok("ab<|im_end|>", add_special_tokens=False)["input_ids"]
    assert decode_completion(tok, ids) == "ab"
