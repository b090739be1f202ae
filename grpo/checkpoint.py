"""Checkpoints: plain Hugging Face folders + a training-state file, written atomically.

Layout: `<run>/checkpoints/step-000010/` holds config.json, model.safetensors and
the tokenizer (transformers and vLLM load it unchanged) plus `trainer_state.pt`
(optimizer, scheduler, RNG states, step, data position) and `complete.json`,
written last. The folder is assembled under a `.tmp-` name and renamed into
place, so a crash, SIGKILL or full disk mid-write never leaves a half-written
checkpoint under a real name: the previous one stays the latest. Older
checkpoints are deleted only after the new one is complete.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from grpo.errors import CheckpointError, GrpoError

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
DONE_FILE = "complete.json"
REPLACED = ".replaced-"  # prefix of an old copy being swapped out by a re-save of the same step


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def rng_state() -> dict:
    import numpy as np
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _all_finite(model) -> bool:
    import torch

    return all(torch.isfinite(p).all().item() for p in model.parameters())


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer=None, scheduler=None,
                    extra: dict | None = None, keep: int = 2) -> Path:
    """Write checkpoint `step` atomically; return its folder. Refuses non-finite weights."""
    import torch

    if not _all_finite(model):
        raise CheckpointError(f"refusing to write checkpoint at step {step}: the model has NaN/Inf weights.")
    root = checkpoint_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / _step_dir_name(step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        _save_model(model, tokenizer, tmp)
        state = {"step": step, "rng": rng_state(), "extra": extra or {},
                 "optimizer": optimizer.state_dict() if optimizer is not None else None,
                 "scheduler": scheduler.state_dict() if scheduler is not None else None}
        torch.save(state, tmp / STATE_FILE)
        (tmp / DONE_FILE).write_text(json.dumps({"step": step, "time": time.time()}))
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (e.g. the loop's last save, then the final one)
            # Two renames, never a delete first: a crash between them leaves the old copy whole
            # under `.replaced-` (list_checkpoints finds it, the next save puts it back).
            aside = root / f"{REPLACED}{final.name}-{os.getpid()}"
            os.replace(final, aside)
            os.replace(tmp, final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except Exception as e:  # OSError, but torch/safetensors report a full disk as RuntimeError & co.
        full = _disk_full(e, root)
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        why = "disk full" if full else f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"could not write checkpoint for step {step} ({why}); the last good checkpoint "
            f"{last if last else '(none)'} is intact. Free space or change train.output_dir, then resume "
            "(train.resume=true)."
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


def _disk_full(e: BaseException, root: Path) -> bool:
    """ENOSPC anywhere in the exception chain, or (for writers that lose the errno, such as
    torch.save's "iostream error") a filesystem with almost nothing left."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    try:
        return shutil.disk_usage(root).free < (1 << 20)
    except OSError:
        return False


def _save_model(model, tokenizer, folder: Path) -> None:
    """Save plain HF weights; a peft model is saved merged (loadable without peft) plus its adapter."""
    if hasattr(model, "peft_config"):
        import copy

        model.save_pretrained(folder / "adapter")
        # Merging in place would fold the adapters being trained into the base: merge a copy.
        copy.deepcopy(model).merge_and_unload().save_pretrained(folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _prune(root: Path, keep: int) -> None:
    for stale in root.glob(f"{REPLACED}step-*"):  # a re-save that crashed between its two renames
        if stale.name.endswith(f"-{os.getpid()}"):
            continue
        name = _replaced_name(stale)
        if not (root / name).exists() and (stale / DONE_FILE).is_file():
            os.replace(stale, root / name)  # the only whole copy of that step: put it back
        else:
            shutil.rmtree(stale, ignore_errors=True)
    done = sorted(p for p in root.glob("step-*") if (p / DONE_FILE).is_file())
    for old in done[: max(0, len(done) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a crash in an earlier process
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def _replaced_name(p: Path) -> str:
    return p.name[len(REPLACED):].rsplit("-", 1)[0]  # ".replaced-step-000004-123" -> "step-000004"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, newest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = {p.name: p for p in root.glob("step-*") if (p / DONE_FILE).is_file()}
    for p in root.glob(f"{REPLACED}step-*"):  # see save_checkpoint: whole, while its step's folder is missing
        if _replaced_name(p) not in found and (p / DONE_FILE).is_file():
            found[_replaced_name(p)] = p
    return [found[name] for name in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """Newest complete checkpoint whose files pass a quick integrity check."""
    from grpo.models.loader import check_hf_folder

    for ckpt in list_checkpoints(run_dir):
        try:
            check_hf_folder(ckpt)
            if not (ckpt / STATE_FILE).is_file():
                raise CheckpointError("no trainer state")
            return ckpt
        except Exception as e:  # a corrupt checkpoint is skipped loudly, never loaded
            log.warning("skipping checkpoint %s: %s", ckpt, e)
    return None


def load_latest_checkpoint(run_dir: Path, model, optimizer=None, scheduler=None
                           ) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that loads; a corrupt one is skipped (loudly) for the one
    before it. None when the run has no checkpoint; CheckpointError when none of them loads."""
    from grpo.models.loader import check_hf_folder

    found = list_checkpoints(run_dir)
    problems = []
    for ckpt in found:
        try:
            check_hf_folder(ckpt)
            return ckpt, load_checkpoint(ckpt, model, optimizer, scheduler)
        except GrpoError as e:
            log.warning("skipping checkpoint %s: %s", ckpt, e)
            problems.append(f"{ckpt.name}: {e}")
    if found:
        raise CheckpointError(f"none of the {len(found)} checkpoints in {checkpoint_root(run_dir)} loads: "
                              f"{'; '.join(problems)}. Delete them to start over, or point train.output_dir/"
                              "run_name elsewhere.")
    return None


def load_checkpoint(ckpt: Path, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Load weights + optimizer/scheduler/RNG state from `ckpt`; return the state dict.
    A corrupt or mismatched checkpoint raises CheckpointError before the model is touched
    (weights are read and checked first, then copied in)."""
    import torch

    try:
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
        if not isinstance(state, dict) or not {"step", "rng"} <= set(state):
            raise ValueError(f"not a trainer state (a {type(state).__name__})")
    except Exception as e:
        raise CheckpointError(f"{ckpt / STATE_FILE} is corrupt ({type(e).__name__}: {e}).") from e
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        try:
            adapter = load_peft_weights(str(ckpt / "adapter"))
        except Exception as e:
            raise CheckpointError(f"{ckpt / 'adapter'} is corrupt ({type(e).__name__}: {e}).") from e
        set_peft_model_state_dict(model, adapter)
    else:
        _load_hf_weights(model, ckpt)
    try:
        if optimizer is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
    except Exception as e:
        raise CheckpointError(f"{ckpt / STATE_FILE} does not fit this run's optimizer/scheduler "
                              f"({type(e).__name__}: {e}); was the config changed since it was saved?") from e
    return state


def _load_hf_weights(model, ckpt: Path) -> None:
    """Reload a checkpoint's weights in place, through transformers' own format conversion."""
    from transformers import AutoModelForCausalLM

    try:
        fresh = AutoModelForCausalLM.from_pretrained(ckpt, dtype=next(model.parameters()).dtype)
    except Exception as e:
        raise CheckpointError(f"weights of {ckpt} do not load ({type(e).__name__}: {e}).") from e
    sd, own = fresh.state_dict(), model.state_dict()
    missing, unexpected = [k for k in own if k not in sd], [k for k in sd if k not in own]
    shapes = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if unexpected or shapes or [k for k in missing if "lm_head" not in k]:
        raise CheckpointError(f"checkpoint {ckpt} does not match the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, other shape {shapes[:3]}")
    model.load_state_dict(sd, strict=False)
