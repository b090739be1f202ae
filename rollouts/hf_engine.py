"""transformers `generate` engine: the fallback without vLLM, and the reference in tests.

Same outputs as the vLLM engines: token ids from the shared prompt encoding,
per-token logprobs of the temperature-scaled distribution before top-k/top-p
truncation (log-softmax of raw logits / T, from `output_logits`; greedy:
T = 1), finish reason, and the routing of a teacher-forced forward of each
sequence for MoE models (hf_routing.py). Seeds: each call runs under
`fork_rng` seeded like the vLLM engine's (vllm_common.call_seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from grpo.errors import EngineError
from rollouts.prompts import check_request, decode_completion, encode_prompts, load_tokenizer
from rollouts.types import Completion, Prompt, SamplingConfig
from rollouts.vllm_common import call_seed
from rollouts.weights import clean_name


class HFEngine:
    """Engine protocol over a transformers causal LM (`model` may be the trainer's own policy)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        max_model_len: int = 1024,
        max_num_seqs: int = 32,
        seed: int = 0,
        chat: bool | None = None,
        model=None,
        tokenizer=None,
        dtype: str = "float32",
    ):
        # The caller may hand over its own model (the trainer's policy) and tokenizer; else the folder's.
        self.model_dir = Path(model_dir)
        self.max_model_len, self.max_num_seqs, self.seed, self.chat = max_model_len, max_num_seqs, seed, chat
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_dir)
        self.model = model if model is not None else _load_model(self.model_dir, dtype)
        self._calls = 0
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        eos = list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else [])
        self.eos_ids = sorted(set(eos) | ({self.tokenizer.eos_token_id} - {None}))
        from rollouts.hf_routing import moe_modules

        self.moe_layer_ids = list(moe_modules(self.model))

    def generate(
        self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig, return_routing: bool = False
    ) -> list[Completion]:
        import torch

        prompt_ids = encode_prompts(self.tokenizer, prompts, chat=self.chat)
        check_request(prompt_ids, group_size, sampling.max_tokens, self.max_model_len, sampling.temperature)
        rows = [(i // group_size, prompt_ids[i // group_size]) for i in range(len(prompt_ids) * group_size)]
        seed = call_seed(self.seed, self._calls, sampling.seed)
        self._calls += 1
        was_training = self.model.training
        self.model.eval()
        out: list[Completion] = []
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                for start in range(0, len(rows), self.max_num_seqs):
                    out += self._generate_batch(rows[start:start + self.max_num_seqs], sampling)
        finally:
            self.model.train(was_training)
        if return_routing and self.moe_layer_ids:
            from rollouts.hf_routing import hf_routing

            with torch.no_grad():
                routes = hf_routing(self.model, [c.prompt_ids + c.completion_ids for c in out])
            for c, r in zip(out, routes):
                c.routed_experts = r
        return out

    def _generate_batch(self, rows: list[tuple[int, list[int]]], s: SamplingConfig) -> list[Completion]:
        import torch
        from transformers import GenerationConfig

        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        width = max(len(ids) for _, ids in rows)
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # left-padded [b, P]
        mask = torch.zeros_like(input_ids)
        for i, (_, ids) in enumerate(rows):
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        greedy = s.temperature == 0
        # A fresh config: the checkpoint's generation defaults (repetition penalty,
        # its own temperature...) must not leak into the sampling distribution.
        cfg = GenerationConfig(
            do_sample=not greedy, temperature=None if greedy else s.temperature, top_p=None if greedy else s.top_p,
            top_k=None if greedy or s.top_k <= 0 else s.top_k, max_new_tokens=s.max_tokens, eos_token_id=self.eos_ids,
            pad_token_id=pad, output_logits=True, return_dict_in_generate=True,
            stop_strings=list(s.stop) or None,
        )
        device = next(self.model.parameters()).device
        res = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=cfg,
            tokenizer=self.tokenizer if s.stop else None,
        )
        new = res.sequences[:, width:].cpu()  # [b, steps]
        logits = torch.stack(res.logits, dim=1).float().cpu()  # [b, steps, V], raw
        logprobs = torch.log_softmax(logits / (1.0 if greedy else s.temperature), dim=-1)
        out = []
        for i, (p_idx, ids) in enumerate(rows):
            toks = new[i].tolist()
            n, reason = self._end(toks, s)
            lps = logprobs[i, torch.arange(n), new[i, :n]].tolist()
            out.append(Completion(prompt_index=p_idx, prompt_ids=list(ids), completion_ids=toks[:n], logprobs=lps,
                                  text=decode_completion(self.tokenizer, toks[:n]), finish_reason=reason))
        return out

    def _end(self, toks: list[int], s: SamplingConfig) -> tuple[int, str]:
        """(length, finish reason) of one generated row: first EOS or stop string, else the length cap."""
        eos = set(self.eos_ids)
        for t, tok in enumerate(toks[: s.max_tokens]):
            if tok in eos:
                return t + 1, "stop"
            if s.stop:
                text = self.tokenizer.decode(toks[: t + 1], skip_special_tokens=True)
                if any(x in text for x in s.stop):
                    return t + 1, "stop"
        return min(len(toks), s.max_tokens), "length"

    def update_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        """Copy (name, tensor) pairs with HF in-memory names into the model (skipped
        when the engine was built on the trainer's own model object)."""
        import torch

        own = dict(self.model.named_parameters())
        own.update(dict(self.model.named_buffers()))
        unknown = []
        with torch.no_grad():
            for name, t in named_tensors:
                clean = clean_name(name)
                if clean is None:
                    continue
                target = own.get(clean)
                if target is None:
                    unknown.append(clean)
                elif target.data_ptr() != t.data_ptr():
                    target.copy_(t.detach())
        if unknown:
            raise EngineError(
                f"update_weights: {len(unknown)} names are not parameters of {self.model_dir.name} "
                f"(first: {unknown[:3]}); pass the trainer's model.named_parameters()."
            )

    def shutdown(self) -> None:
        self.model = None


def _load_model(folder: Path, dtype: str):
    """The engine's own copy of the model, as the trainer loads it (no KV-cache default: generate
    turns it on through its GenerationConfig)."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise EngineError(f"transformers could not load {folder}: {e}") from e
    model.config.use_cache = False
    return model
