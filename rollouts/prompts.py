"""Prompt encoding shared by every engine: the chat template is applied once, here.

Engines only ever see token ids, so the trainer trains on exactly the tokens
that were sampled, whichever engine produced them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from grpo.errors import EngineError
from rollouts.types import Prompt


def load_tokenizer(folder: str | Path):
    """The model folder's tokenizer, with EOS as pad token when it has none: the one loader, shared by
    the engines and the trainer (grpo.models.loader), so both encode prompts alike."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_prompts(
    tokenizer,
    prompts: Sequence[Prompt],
    add_generation_prompt: bool = True,
    chat: bool | None = None,
) -> list[list[int]]:
    """Token ids of each prompt.

    - A chat prompt (list of {"role", "content"} messages) always goes through
      the tokenizer's chat template.
    - A text prompt is wrapped as a single user message when `chat` is True,
      or when `chat` is None (auto) and the tokenizer has a chat template;
      with `chat=False` it is tokenized as is (with the tokenizer's special
      tokens, e.g. BOS).

    The template is rendered to text and then tokenized without adding special
    tokens: the template already contains BOS/role markers, adding them again
    would double them.
    """
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    out: list[list[int]] = []
    for i, p in enumerate(prompts):
        if isinstance(p, str) and not use_chat:
            out.append(list(tokenizer(p)["input_ids"]))
            continue
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        if not isinstance(p, str) and not (messages and all(isinstance(m, dict) and "role" in m for m in messages)):
            raise EngineError(f"prompt {i} is neither text nor a list of {{'role', 'content'}} messages.")
        if not has_chat_template(tokenizer):
            raise EngineError(
                f"prompt {i} is a chat conversation but the tokenizer has no chat template: "
                "pass text prompts with chat=False, or set tokenizer.chat_template."
            )
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def check_request(
    prompt_ids: Sequence[Sequence[int]], group_size: int, max_tokens: int, max_model_len: int, temperature: float = 1.0
) -> None:
    """Reject requests the engines would fail on deep inside (or that cannot train), one line each.

    group_size must be >= 2 when sampling: GRPO advantages are relative to the
    group. One greedy completion per prompt (temperature 0) stays allowed: that
    is an evaluation, where copies would be identical.
    """
    if group_size < 1 or (group_size < 2 and temperature > 0):
        raise EngineError(
            f"group_size={group_size}: GRPO needs at least 2 sampled completions per prompt "
            "(advantages are relative to the group); set group_size >= 2 (1 is accepted only with temperature=0)."
        )
    if max_tokens < 1:
        raise EngineError(f"max_tokens={max_tokens}: set max_tokens >= 1.")
    room = max_model_len - max_tokens
    if room < 1:
        raise EngineError(
            f"max_tokens={max_tokens} leaves no room for the prompt in max_model_len={max_model_len}: "
            "lower max_tokens or raise max_model_len."
        )
    for i, ids in enumerate(prompt_ids):
        if len(ids) == 0:
            raise EngineError(f"prompt {i} is empty after encoding: give it some text.")
        if len(ids) > room:
            raise EngineError(
                f"prompt {i} has {len(ids)} tokens but max_model_len={max_model_len} - max_tokens={max_tokens} "
                f"leaves room for {room}: shorten the prompt, lower max_tokens or raise max_model_len."
            )


def decode_completion(tokenizer, completion_ids: Sequence[int]) -> str:
    """The completion's text, identical for every engine: the decoded sampled
    tokens, special tokens (EOS, role markers) dropped."""
    return tokenizer.decode(list(completion_ids), skip_special_tokens=True)
