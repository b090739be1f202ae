"""Pack rollouts into micro-batches of rows with block attention masks.

A *unit* is what must share one row:
  plain          one sequence: prompt + completion, causal
  shared prompt  one prompt followed by the completions of its group: the prompt
                 is computed once, each completion attends to the prompt and
                 causally to itself, its positions continue after the prompt.
Units are placed first-fit-decreasing into rows of at most `max_row_tokens`
(a unit longer than that gets a row of its own), rows are grouped into
micro-batches of at most `micro_batch_tokens` padded slots (rows * longest row).
Row padding is the only padding; it is small because rows are packed full.
A shared-prompt group longer than `micro_batch_tokens` is split into several
units, each with its own copy of the prompt.

Why rows at all: SDPA with a mask computes every (query, key) pair of a row, so
attention costs O(S^2) per row however sparse the mask; short rows keep that
waste small (see `auto_row_tokens`).

The last token of a completion is never fed in: it predicts nothing that is
scored (and rollout engines have no routing record for it).

Attention mask rule (one 4D bool mask [R, 1, S, S], True = attend):
  i attends j  <=>  same unit  and  j <= i  and  (j is prompt  or  same branch as i)
with branch 0 = the prompt (or the whole plain sequence), branch k = completion k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass
class PackedMicroBatch:
    """One forward pass. Positions are addressed row-major (flat index r * S + s), which is
    also the order in which the model's MoE routers see the flattened hidden states."""

    input_ids: Tensor  # [R, S] long
    position_ids: Tensor  # [R, S] long
    attention_mask: Tensor  # [R, 1, S, S] bool
    source_seq: Tensor  # [R, S] long: batch index of the sequence this position comes from, -1 = padding
    source_pos: Tensor  # [R, S] long: its position in that sequence's prompt + completion, -1 = padding
    seq_index: Tensor  # [n] long: batch indices of the sequences scored here (local order)
    pred_flat: Tensor  # [M] long: flat position whose hidden state predicts each scored token
    target_ids: Tensor  # [M] long: the scored (completion) token ids
    tok_seq: Tensor  # [M] long: local sequence index (into seq_index) of each scored token
    tok_pos: Tensor  # [M] long: index of each scored token within its completion

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) input tokens: what the forward pass really has to compute."""
        return int((self.source_seq >= 0).sum())

    @property
    def num_slots(self) -> int:
        return int(self.input_ids.numel())

    def to(self, device: torch.device | str) -> "PackedMicroBatch":
        return PackedMicroBatch(**{k: v.to(device) for k, v in self.__dict__.items()})


@dataclass
class _Unit:
    prompt: list[int]
    seqs: list[int]  # batch indices; >1 only with a shared prompt
    length: int  # tokens fed in


def _make_units(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], group_ids: Sequence[Hashable],
    include: Sequence[int], shared_prompt: bool, max_unit_tokens: int,
) -> list[_Unit]:
    units: list[_Unit] = []
    open_units: dict[tuple, _Unit] = {}
    for i in include:
        c = len(completions[i])
        if c == 0:
            continue  # nothing to score
        p = list(prompts[i])
        if not p:
            raise ValueError(f"sequence {i} has an empty prompt: the first completion token has no predictor")
        if not shared_prompt:
            units.append(_Unit(p, [i], len(p) + c - 1))
            continue
        key = (group_ids[i], tuple(p))
        u = open_units.get(key)
        if u is None or u.length + c - 1 > max_unit_tokens:  # start (another) unit for this prompt
            u = open_units[key] = _Unit(p, [], len(p))
            units.append(u)
        u.seqs.append(i)
        u.length += c - 1
    return units


def _rows(units: list[_Unit], max_row_tokens: int) -> list[list[_Unit]]:
    """First-fit decreasing bin packing of units into rows."""
    rows: list[list[_Unit]] = []
    fill: list[int] = []
    for u in sorted(units, key=lambda u: -u.length):
        for r, used in enumerate(fill):
            if used + u.length <= max_row_tokens:
                rows[r].append(u)
                fill[r] += u.length
                break
        else:
            rows.append([u])
            fill.append(u.length)
    return rows


def _row_arrays(row: list[_Unit], completions: Sequence[Sequence[int]]) -> dict[str, list[int]]:
    """Flat per-position lists of one row, plus the scored-token lists (positions local to the row)."""
    a: dict[str, list[int]] = {
        k: [] for k in ("ids", "pos", "unit", "branch", "sseq", "spos", "pred", "tgt", "tseq", "tpos")
    }
    for ui, u in enumerate(row):
        start = len(a["ids"])
        P = len(u.prompt)
        a["ids"] += u.prompt
        a["pos"] += range(P)
        a["unit"] += [ui] * P
        a["branch"] += [0] * P
        a["sseq"] += [u.seqs[0]] * P
        a["spos"] += range(P)
        last_prompt = start + P - 1
        for k, s in enumerate(u.seqs):
            comp = list(completions[s])
            fed = comp[:-1]
            here = len(a["ids"])
            a["ids"] += fed
            a["pos"] += range(P, P + len(fed))
            a["unit"] += [ui] * len(fed)
            # plain units keep the completion on branch 0: one causal sequence
            a["branch"] += [k + 1 if len(u.seqs) > 1 else 0] * len(fed)
            a["sseq"] += [s] * len(fed)
            a["spos"] += range(P, P + len(fed))
            a["pred"] += [last_prompt] + list(range(here, here + len(fed)))
            a["tgt"] += comp
            a["tseq"] += [s] * len(comp)
            a["tpos"] += range(len(comp))
    return a


def _block_mask(unit: Tensor, branch: Tensor) -> Tensor:
    """[R, S] unit / branch ids (unit -1 = padding) -> [R, 1, S, S] bool mask."""
    S = unit.shape[1]
    same_unit = unit[:, :, None] == unit[:, None, :]  # [R, S, S] (i, j)
    branch_ok = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    real = (unit >= 0)[:, :, None]
    mask = same_unit & branch_ok & causal & real
    mask |= torch.eye(S, dtype=torch.bool)  # padding attends to itself: no all-masked (NaN) rows
    return mask[:, None]


def _micro_batch(rows: list[list[_Unit]], completions: Sequence[Sequence[int]], pad_id: int) -> PackedMicroBatch:
    arrs = [_row_arrays(r, completions) for r in rows]
    R, S = len(arrs), max(len(a["ids"]) for a in arrs)

    def grid(key: str, fill: int) -> Tensor:
        out = torch.full((R, S), fill, dtype=torch.long)
        for r, a in enumerate(arrs):
            out[r, : len(a[key])] = torch.tensor(a[key], dtype=torch.long)
        return out

    unit, branch = grid("unit", -1), grid("branch", 0)
    pred = torch.tensor([r * S + p for r, a in enumerate(arrs) for p in a["pred"]], dtype=torch.long)
    tseq_global = [s for a in arrs for s in a["tseq"]]
    seq_order = list(dict.fromkeys(tseq_global))
    local = {s: k for k, s in enumerate(seq_order)}
    return PackedMicroBatch(
        input_ids=grid("ids", pad_id), position_ids=grid("pos", 0), attention_mask=_block_mask(unit, branch),
        source_seq=grid("sseq", -1), source_pos=grid("spos", -1),
        seq_index=torch.tensor(seq_order, dtype=torch.long), pred_flat=pred,
        target_ids=torch.tensor([t for a in arrs for t in a["tgt"]], dtype=torch.long),
        tok_seq=torch.tensor([local[s] for s in tseq_global], dtype=torch.long),
        tok_pos=torch.tensor([t for a in arrs for t in a["tpos"]], dtype=torch.long),
    )


def pack_micro_batches(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
    group_ids: Optional[Sequence[Hashable]] = None, *, include: Optional[Sequence[int]] = None,
    shared_prompt: bool = True, micro_batch_tokens: int = 4096, max_row_tokens: int = 1024, pad_id: int = 0,
) -> list[PackedMicroBatch]:
    """Pack sequences `include` (default: all) into micro-batches. Shared-prompt units group
    completions with equal group id and equal prompt ids; a group too long for one row is split."""
    include = list(range(len(prompts))) if include is None else list(include)
    group_ids = list(range(len(prompts))) if group_ids is None else list(group_ids)
    # a group is split (its prompt repeated) only when it cannot fit one micro-batch
    units = _make_units(prompts, completions, group_ids, include, shared_prompt, max(micro_batch_tokens, 1))
    if not units:
        return []
    rows = sorted(_rows(units, max_row_tokens), key=lambda r: -sum(u.length for u in r))
    batches: list[list[list[_Unit]]] = []
    for row in rows:  # longest first: the first row of a micro-batch sets its width
        width = sum(u.length for u in batches[-1][0]) if batches else 0
        if batches and (len(batches[-1]) + 1) * width <= micro_batch_tokens:
            batches[-1].append(row)
        else:
            batches.append([row])
    return [_micro_batch(b, completions, pad_id) for b in batches]


def _is_expert_weight(name: str) -> bool:
    return ".experts." in name or name.endswith(("experts.gate_up_proj", "experts.down_proj"))


def auto_row_tokens(model, micro_batch_tokens: int, waste: float = 0.1, floor: int = 256) -> int:
    """Row length at which masked attention scores (4 * S * hidden FLOPs per token and layer)
    cost about `waste` of the linear layers (2 * active params per layer): longer rows for wider models."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    embeddings = {id(m.weight) for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None}
    n_exp = next((getattr(cfg, a) for a in ("num_local_experts", "num_experts", "n_routed_experts")
                  if getattr(cfg, a, None)), None)
    k = getattr(cfg, "num_experts_per_tok", None)
    active = 0.0
    for name, p in base.named_parameters():
        if id(p) in embeddings:
            continue
        active += p.numel() * (k / n_exp if (n_exp and k and _is_expert_weight(name)) else 1.0)
    per_layer = active / max(int(cfg.num_hidden_layers), 1)
    return int(min(max(waste * 2 * per_layer / (4 * int(cfg.hidden_size)), floor), micro_batch_tokens))


def layout_token_features(
    features_per_seq: Sequence[Optional[np.ndarray | Tensor]], packed: PackedMicroBatch, fill: int | float = -1
) -> Tensor:
    """Lay per-token arrays out in packed order: features_per_seq[i] is [P_i + C_i, ...] for batch
    sequence i (e.g. routed experts [P+C, L, k]); returns [R * S, ...] (row-major, the order a
    router sees flattened hidden states). Padding and sequences without features get `fill`."""
    first = next((f for f in features_per_seq if f is not None), None)
    if first is None:
        raise ValueError("no sequence has features")
    first = torch.as_tensor(first)
    src_seq, src_pos = packed.source_seq.reshape(-1), packed.source_pos.reshape(-1)  # [R*S]
    out = torch.full((src_seq.numel(), *first.shape[1:]), fill, dtype=first.dtype)
    for s in torch.unique(src_seq[src_seq >= 0]).tolist():
        f = features_per_seq[s]
        if f is None:
            continue
        sel = (src_seq == s).nonzero()[:, 0]
        out[sel] = torch.as_tensor(f)[src_pos[sel]]
    return out


def padded_equivalent_tokens(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], include: Optional[Sequence[int]] = None
) -> int:
    """Slots a left/right padded batch (TRL style) would compute: n * (max prompt + max completion)."""
    idx = list(range(len(prompts))) if include is None else list(include)
    if not idx:
        return 0
    return len(idx) * (max(len(prompts[i]) for i in idx) + max(len(completions[i]) for i in idx))
