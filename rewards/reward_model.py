"""`reward_model`: score completions with a learned reward model.

Any `AutoModelForSequenceClassification` checkpoint (local folder or hub id)
works, with its own tokenizer. Inputs are formatted the way TRL's
RewardTrainer trained it: the tokenizer's chat template on
[user: prompt, assistant: completion] when it has one ("chat"), else
prompt + completion + eos_token as plain text ("concat"; `separator`, a newline by
default, goes between them unless the prompt already ends in whitespace: a
prompt "Calculate 4 + 1." followed by "5" must not read "1.5"). Long inputs are
cut from the left, so the end of the completion is always seen.

Scored in batches sorted by length (little padding), under inference_mode, on
`device`. Optional normalisation: "batch" (z-score within the call; also
`normalize: true`), "running" (z-score against the running mean/std of every
score seen so far), "sigmoid".
"""

from __future__ import annotations

import math

from rewards.errors import RewardError

NORMALIZE = ("none", "batch", "running", "sigmoid")
TEMPLATES = ("auto", "chat", "concat")


class RewardModel:
    """Reward function object; call it like a plain TRL reward function.

    model: checkpoint folder or hub id. tokenizer: its tokenizer, if stored elsewhere.
    label_index: which logit is the reward (0 for the usual num_labels=1 heads).
    """

    def __init__(self, model: str, tokenizer: str | None = None, device: str = "cpu", batch_size: int = 32,
                 max_length: int = 512, normalize: bool | str = False, template: str = "auto",
                 dtype: str = "float32", label_index: int = 0, separator: str = "\n") -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.normalize = {True: "batch", False: "none", None: "none"}.get(normalize, normalize)
        if self.normalize not in NORMALIZE:
            raise RewardError(f"reward_model: normalize must be true/false or one of {NORMALIZE}, got {normalize!r}")
        if template not in TEMPLATES:
            raise RewardError(f"reward_model: template must be one of {TEMPLATES}, got {template!r}")
        if batch_size < 1 or max_length < 8:
            raise RewardError("reward_model: batch_size must be >= 1 and max_length >= 8")
        self.device = torch.device(device)
        self.tok = AutoTokenizer.from_pretrained(tokenizer or model)
        self.tok.truncation_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(model, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        n_labels = self.model.config.num_labels
        if not 0 <= label_index < n_labels:
            raise RewardError(f"reward_model: label_index {label_index} but the head has {n_labels} outputs")
        self.use_chat = template == "chat" or (template == "auto" and bool(getattr(self.tok, "chat_template", None)))
        if template == "chat" and not getattr(self.tok, "chat_template", None):
            raise RewardError("reward_model: template='chat' but the tokenizer has no chat template")
        self.batch_size, self.max_length, self.label_index = batch_size, max_length, label_index
        self.separator = separator
        self._count, self._mean, self._m2 = 0, 0.0, 0.0  # running statistics (Welford)
        self.__name__ = "reward_model"

    def _text(self, prompt: str, completion: str) -> str:
        if self.use_chat:
            return self.tok.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}], tokenize=False)
        sep = "" if not prompt or prompt[-1].isspace() or completion[:1].isspace() else self.separator
        text = prompt + sep + completion
        eos = self.tok.eos_token
        return text + eos if eos and not text.endswith(eos) else text

    def raw_scores(self, prompts: list[str], completions: list[str]) -> list[float]:
        """Unnormalised model scores, one per (prompt, completion)."""
        import torch

        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [0.0] * len(texts)
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                enc = self.tok([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length,
                               add_special_tokens=not self.use_chat, return_tensors="pt").to(self.device)
                logits = self.model(**enc).logits[:, self.label_index].float().cpu().tolist()  # [batch]
                for i, v in zip(idx, logits):
                    out[i] = v
        return out

    def __call__(self, prompts: list[str], completions: list[str], **columns) -> list[float]:
        scores = self.raw_scores(prompts, completions)
        if self.normalize == "sigmoid":
            return [1.0 / (1.0 + math.exp(-s)) for s in scores]
        if self.normalize == "running":
            for s in scores:
                self._count += 1
                delta = s - self._mean
                self._mean += delta / self._count
                self._m2 += delta * (s - self._mean)
            mean, var = self._mean, self._m2 / max(self._count, 1)
        elif self.normalize == "batch":
            mean = sum(scores) / len(scores) if scores else 0.0
            var = sum((s - mean) ** 2 for s in scores) / len(scores) if scores else 0.0
        else:
            return scores
        std = math.sqrt(var)
        return [(s - mean) / std if std > 1e-8 else s - mean for s in scores]

    def close(self) -> None:
        self.model = None
