"""Per-token log-probs (and entropy) with the LM head applied only where needed.

The decoder runs on a packed micro-batch; its final hidden states are gathered
at the positions that predict completion tokens only (prompt and padding
positions never meet the LM head), then projected through the LM head in
vocabulary chunks by `ChunkedLogProbs`: an online log-sum-exp over [n, chunk]
tiles in the forward, and tile recomputation in the backward. Memory is
O(n * chunk), never O(n * vocab); gradients flow to the hidden states and to
the LM-head weight (tied embeddings included).

Entropy is returned for logging and carries no gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from grpo.packing import PackedMicroBatch

Tensor = torch.Tensor


class ChunkedLogProbs(torch.autograd.Function):
    """logp[i] = log_softmax(hidden[i] @ weight.T / T)[target[i]] without [n, V] logits."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Optional[Tensor], targets: Tensor,
                temperature: float, chunk: int) -> tuple[Tensor, Tensor]:
        # hidden [n, H], weight [V, H], bias [V] | None, targets [n] long
        V = weight.shape[0]
        hs = hidden.float() / temperature  # [n, H]: scaling h once is cheaper than every [n, c] tile
        bs = None if bias is None else bias.float() / temperature
        m = s = q = None  # running max, sum exp(z - m), sum (z - m) exp(z - m): all [n]
        target_z = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # [n]
        for lo in range(0, V, chunk):
            z = _tile(hs, weight, bs, lo, min(lo + chunk, V))  # [n, c] fp32 logits / T
            inside = (targets >= lo) & (targets < lo + z.shape[1])
            idx = (targets - lo).clamp(0, z.shape[1] - 1)
            target_z += torch.where(inside, z.gather(1, idx[:, None])[:, 0], 0.0)
            new_m = z.max(dim=1).values if m is None else torch.maximum(m, z.max(dim=1).values)
            zs = z.sub_(new_m[:, None])  # in place: z - new_m
            e = torch.exp(zs)
            s_c, q_c = e.sum(1), torch.bmm(e[:, None, :], zs[:, :, None]).view(-1)
            if m is None:
                s, q = s_c, q_c
            else:  # rebase the accumulators from m to new_m
                d = m - new_m
                alpha = torch.exp(d)
                s, q = alpha * s + s_c, alpha * (q + d * s) + q_c
            m = new_m
        log_z = m + torch.log(s)  # [n]
        logp = target_z - log_z
        entropy = torch.log(s) - q / s  # H = logZ - E_p[z]
        ctx.save_for_backward(hidden, weight, bias, targets, log_z)
        ctx.temperature, ctx.chunk = temperature, chunk
        ctx.mark_non_differentiable(entropy)
        return logp.to(hidden.dtype), entropy.to(hidden.dtype)

    @staticmethod
    def backward(ctx, grad_logp: Tensor, _grad_entropy: Optional[Tensor]):
        hidden, weight, bias, targets, log_z = ctx.saved_tensors
        T, chunk = ctx.temperature, ctx.chunk
        V = weight.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = grad_logp.float()  # [n]
        hs = hidden.float() / T
        bs = None if bias is None else bias.float() / T
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(V, dtype=torch.float32, device=weight.device) if (need_b and bias is not None) else None
        for lo in range(0, V, chunk):
            hi = min(lo + chunk, V)
            # d logp / d z = onehot(target) - softmax(z), z = (h W^T + b) / T; all in place on the tile
            gz = _tile(hs, weight, bs, lo, hi).sub_(log_z[:, None]).exp_().mul_(-g[:, None])  # [n, c]
            rows = ((targets >= lo) & (targets < hi)).nonzero()[:, 0]
            gz[rows, targets[rows] - lo] += g[rows]
            if grad_h is not None:
                grad_h.addmm_(gz, weight[lo:hi].float())
            if grad_w is not None:
                grad_w[lo:hi] = gz.t() @ hs  # hs carries the 1 / T
            if grad_b is not None:
                grad_b[lo:hi] = gz.sum(0) / T
        return (
            None if grad_h is None else grad_h.div_(T).to(hidden.dtype),
            None if grad_w is None else grad_w.to(weight.dtype),
            None if grad_b is None else grad_b.to(bias.dtype),
            None, None, None,
        )


def _tile(hs: Tensor, weight: Tensor, bs: Optional[Tensor], lo: int, hi: int) -> Tensor:
    """Logits / T of vocabulary slice [lo, hi) from pre-scaled hs = h / T, bs = b / T: [n, hi - lo] fp32."""
    z = hs @ weight[lo:hi].float().t()
    if bs is not None:
        z += bs[lo:hi]
    return z


def chunked_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0, chunk: int = 8192,
    bias: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """(logp [n], entropy [n]) of `targets` [n] under softmax(hidden [n, H] @ weight.T / T)."""
    if hidden.shape[0] == 0:  # keep the graph connected so backward on an empty micro-batch works
        z = hidden.sum() * 0.0 + weight.sum() * 0.0
        return z.expand(0), z.detach().expand(0)
    return ChunkedLogProbs.apply(hidden, weight, bias, targets, float(temperature), int(chunk))


def full_logprobs(logits: Tensor, targets: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Reference: full log_softmax. logits [..., V], targets [...] -> (logp, entropy) [...]."""
    lsm = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = lsm.gather(-1, targets[..., None])[..., 0]
    entropy = -(lsm.exp() * lsm).sum(-1)
    return logp, entropy


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The backbone (returns last_hidden_state) and the LM head of a causal LM, peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    for attr in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(base).__name__} scales its logits ({attr}={getattr(cfg, attr)}): the chunked LM head "
                f"does not apply that yet; use a Llama/Mistral/Qwen/DeepSeek-family model."
            )
    head = base.get_output_embeddings()
    if hasattr(head, "base_layer"):
        raise NotImplementedError("LoRA on lm_head is not supported: drop lm_head from lora.target_modules.")
    return base.get_decoder(), head


def packed_logprobs(
    model, mb: "PackedMicroBatch", temperature: float = 1.0, chunk: int = 8192
) -> tuple[Tensor, Tensor]:
    """Forward a packed micro-batch; (logp [M], entropy [M]) of its M scored completion tokens,
    in the micro-batch's token order (mb.tok_seq, mb.tok_pos)."""
    decoder, head = decoder_and_head(model)
    out = decoder(
        input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids, use_cache=False
    )
    hidden = out.last_hidden_state  # [R, S, H]
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, mb.pred_flat)  # [M, H]
    return chunked_logprobs(h, head.weight, mb.target_ids, temperature, chunk, getattr(head, "bias", None))
