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

from grpo.errors import CheckpointError

log = logging.getLogger(__name__)
STATE_FILE = "trainer_state.pt"
DONE_FILE = "complete.json"


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
        if final.exists():  # re-saving the same step (e.g. after resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run_dir)
        why = "disk full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"could not write checkpoint for step {step} ({why}); the last good checkpoint "
            f"{last if last else '(none)'} is intact. Free space or change train.output_dir, then resume."
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep)
    return final


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
    done = sorted(p for p in root.glob("step-*") if (p / DONE_FILE).is_file())
    for old in done[: max(0, len(done) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):  # leftovers of a crash in an earlier process
        if not stale.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(stale, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted((p for p in root.glob("step-*") if (p / DONE_FILE).is_file()), reverse=True)


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


def load_checkpoint(ckpt: Path, model, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Load weights + optimizer/scheduler/RNG state from `ckpt`; return the state dict."""
    import torch

    try:
        state = torch.load(ckpt / STATE_FILE, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{ckpt / STATE_FILE} is corrupt ({type(e).__name__}: {e}).") from e
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(model, load_peft_weights(str(ckpt / "adapter")))
    else:
        _load_hf_weights(model, ckpt)
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def _load_hf_weights(model, ckpt: Path) -> None:
    """Reload a checkpoint's weights in place, through transformers' own format conversion."""
    from transformers import AutoModelForCausalLM

    fresh = AutoModelForCausalLM.from_pretrained(ckpt, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(fresh.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise CheckpointError(f"checkpoint {ckpt} does not match the model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
