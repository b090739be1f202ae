"""Data-parallel training across processes (torchrun / accelerate launch).

Design: every rank draws the same global batch of B prompts (same seeded
sampler) and takes prompts[rank::world], so each group of G completions stays
whole on one rank. Rewards are then all-gathered, so advantages (group or batch
normalised) and reward metrics are computed on the global batch exactly as a
single process would, and each rank keeps its slice. Gradients are summed
across ranks with an all-reduce before clipping; the loss normalisers (number
of sequences, number of tokens) are global, so the update equals the
single-process update on the same global batch. Only rank 0 writes logs and
checkpoints. The process group comes from accelerate (`PartialState`): gloo on
CPUs, NCCL on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> "Dist":
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(rank=state.process_index, world=state.num_processes)

    def shard(self, items: Sequence[Any]) -> list[Any]:
        return list(items[self.rank::self.world])

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as td

        out: list[Any] = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        if not self.enabled:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(list(values), dtype=torch.float64)
        td.all_reduce(t)
        return t.tolist()

    def all_reduce_grads(self, params: Sequence[Any]) -> None:
        """Sum .grad over ranks in one flat buffer (missing grads count as zeros)."""
        if not self.enabled:
            return
        import torch
        import torch.distributed as td

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        td.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).clone()
            offset += n

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as td

            td.barrier()


def launch_torchrun(num_processes: int, train_args: list[str]) -> int:
    """`grpo train --num-processes N ...` -> torchrun with N local processes."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
           "-m", "grpo", "train", *[a for a in train_args if a]]
    return subprocess.call(cmd)
