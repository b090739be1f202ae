"""Typed run configuration: YAML file + `key=value` overrides.

Imports nothing heavy (no torch, no vLLM) so `grpo train --help` is instant.
Every field has a type and a one-line doc (the `doc` metadata), which
`grpo train --help` prints. Unknown keys and wrong types are errors naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


def doc(text: str, default: Any = None, factory: Any = None):
    """A dataclass field with its documentation attached."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


@dataclass
class LoraConfig:
    enabled: bool = doc("train LoRA adapters (peft) instead of all weights", False)
    r: int = doc("LoRA rank", 16)
    alpha: int = doc("LoRA alpha (scale = alpha / r)", 32)
    dropout: float = doc("LoRA dropout", 0.0)
    target_modules: list[str] = doc(
        "module names to adapt", factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


@dataclass
class ModelConfig:
    name: str = doc(
        "policy: smollm2-135m-moe (embedded default), smollm2-135m, tiny-<arch>, a local HF folder, "
        "a .gguf file, or a hub id (needs a network)", "smollm2-135m-moe",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = doc(
        "training dtype (float32 on CPUs: no native bf16 there)", "float32"
    )
    gradient_checkpointing: bool = doc("recompute activations in backward to save memory", False)
    lora: LoraConfig = doc("LoRA settings", factory=LoraConfig)


@dataclass
class DataConfig:
    source: str = doc(
        "prompts: reasoning_gym:<task>[,<task>...], a .jsonl/.parquet/.json file, or a hub dataset "
        "name (needs a network)", "reasoning_gym:basic_arithmetic",
    )
    split: str = doc("split name for hub datasets", "train")
    prompt_column: str = doc("column holding the prompt text", "question")
    answer_column: str = doc("column holding the gold answer (math tasks)", "answer")
    system_prompt: Optional[str] = doc("system message prepended to every chat prompt", None)
    train_size: int = doc("number of training prompts to generate (generators only)", 2000)
    eval_size: int = doc("number of held-out prompts (disjoint from training)", 200)
    seed: int = doc("seed of the data generators and the shuffle", 0)
    generator_kwargs: dict[str, Any] = doc("extra keyword arguments for the generator", factory=dict)
    drop_long_prompts: bool = doc(
        "drop (and count) prompts that do not fit rollout.max_model_len - max_tokens instead of stopping", False
    )
    curriculum: Literal["none", "difficulty", "pass_rate"] = doc(
        "order prompts by generator difficulty, or re-weight by running pass rate", "none"
    )


@dataclass
class RolloutConfig:
    engine: Literal["vllm", "vllm_server", "hf"] = doc(
        "generation engine: colocated vLLM, a `vllm serve` process, or transformers generate", "vllm"
    )
    group_size: int = doc("completions per prompt (G), at least 2", 8)
    temperature: float = doc("sampling temperature (the trainer applies the same one)", 1.0)
    top_p: float = doc("nucleus sampling", 1.0)
    top_k: int = doc("top-k sampling, 0 = off", 0)
    max_tokens: int = doc("maximum completion length in tokens", 64)
    max_model_len: int = doc("context length the engine reserves for (prompt + completion)", 512)
    stop: list[str] = doc("extra stop strings", factory=list)
    server_url: Optional[str] = doc("URL of an existing vLLM server (engine=vllm_server)", None)
    kv_cache_gb: Optional[float] = doc("KV-cache size in GiB; default: sized from the run's needs", None)
    return_routing: bool = doc("record the experts routed per token (MoE policies)", False)
    seed_per_prompt: bool = doc(
        "sample each prompt's group in its own call, seeded by (seed, step, prompt): completions then do "
        "not depend on batch composition or the number of processes (slower: no batching across prompts)",
        False,
    )


@dataclass
class RewardFunctionConfig:
    name: str = doc("registered reward name, or package.module:function, or path/file.py:function", "")
    weight: float = doc("weight in the combined reward", 1.0)
    kwargs: dict[str, Any] = doc("keyword arguments for the reward", factory=dict)
    timeout_s: Optional[float] = doc(
        "your own function only: run it in worker processes with this hard limit per call (a hung "
        "sample is counted as a timeout and scored fault_score); unset = in-process, no limit", None)
    fault_score: float = doc("score of a sample whose reward faulted or timed out (on_fault=count)", 0.0)


@dataclass
class RewardsConfig:
    functions: list[RewardFunctionConfig] = doc(
        "reward functions combined by weight", factory=lambda: [RewardFunctionConfig(name="math_accuracy")]
    )
    on_fault: Literal["error", "count"] = doc(
        "a reward that raises or returns NaN on a sample: stop with an error, or count it and "
        "score the sample with the function's default", "count",
    )
    num_workers: int = doc("reward worker processes", 2)


@dataclass
class AlgoConfig:
    loss: Literal["grpo", "dapo", "dr_grpo", "gspo"] = doc(
        "policy loss: grpo (sequence-mean of token-mean), dapo (token-level, clip-higher), dr_grpo "
        "(constant normaliser), gspo (sequence-level ratio)", "grpo",
    )
    advantage: Literal["group", "batch", "none", "rloo"] = doc(
        "advantage normalisation: group std, batch std, no std (Dr. GRPO), or RLOO leave-one-out", "group"
    )
    epsilon_low: float = doc("lower clip range of the ratio", 0.2)
    epsilon_high: float = doc("upper clip range (DAPO clip-higher: 0.28)", 0.2)
    gspo_epsilon_low: float = doc("GSPO lower clip range (sequence ratio)", 3e-4)
    gspo_epsilon_high: float = doc("GSPO upper clip range (sequence ratio)", 4e-4)
    dual_clip: Optional[float] = doc("dual-clip constant c > 1 for negative advantages; null = off", None)
    beta: float = doc("KL coefficient to the reference model (k3); 0 = no reference model loaded", 0.0)
    kl_ratio: bool = doc(
        "multiply the k3 KL term by the policy ratio pi/pi_old (DeepSeek-V3.2's unbiased KL gradient; "
        "TRL's use_bias_correction_kl)", False,
    )
    num_iterations: int = doc("inner policy updates per batch of rollouts (mu)", 1)
    mask_truncated: bool = doc("drop truncated completions from the loss (DAPO overlong filtering)", False)
    dr_grpo_normalizer: Optional[int] = doc("Dr. GRPO constant normaliser; null = rollout.max_tokens", None)
    is_correction: Literal["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = doc(
        "rollout/trainer mismatch correction with importance weights pi_old/mu_sampler", "token_truncate"
    )
    is_cap: float = doc("cap (truncate) or upper bound (mask) of the importance weights", 2.0)
    is_min: float = doc("lower bound of the importance weights for the mask modes", 0.0)
    dynamic_sampling: bool = doc("drop zero-variance groups and draw more prompts (DAPO)", False)
    dynamic_sampling_max_rounds: int = doc("extra generation rounds allowed to refill the batch", 3)
    temperature: Optional[float] = doc("temperature the trainer applies; null = rollout.temperature", None)


@dataclass
class OptimConfig:
    lr: float = doc("AdamW learning rate", 1e-5)
    weight_decay: float = doc("AdamW weight decay", 0.0)
    betas: list[float] = doc("AdamW betas", factory=lambda: [0.9, 0.99])
    warmup_steps: int = doc("linear warm-up steps", 0)
    schedule: Literal["constant", "cosine"] = doc("learning-rate schedule after warm-up", "constant")
    grad_clip: float = doc("clip the global gradient norm to this value; 0 = off", 1.0)
    micro_batch_tokens: int = doc("token budget of one packed micro-batch (gradient accumulation)", 4096)
    logprob_chunk: int = doc("vocabulary chunk for the log-softmax (memory bound)", 8192)
    shared_prompt: bool = doc("pack a prompt once with its G completions (block attention mask)", True)
    max_nonfinite_steps: int = doc("stop after this many consecutive NaN/Inf updates (each skipped)", 3)


@dataclass
class MoEConfig:
    routing_replay: Literal["none", "r2", "r3"] = doc(
        "replay expert choices: r3 = the rollout engine's, r2 = the trainer's old-policy routing", "none"
    )
    aux_loss_coef: float = doc("load-balancing aux loss coefficient (0 in RL, as large frameworks do)", 0.0)
    z_loss_coef: float = doc("router z-loss coefficient", 0.0)
    freeze_router: bool = doc("do not train the router weights", False)
    router_fp32: bool = doc("compute router logits in float32", True)
    kl_diag_every: int = doc(
        "every N steps, measure train-vs-rollout KL with and without replay (two extra no-grad forwards); 0 = off",
        1,
    )
    kl_guard_threshold: Optional[float] = doc("warn when train-vs-rollout KL exceeds this; null = off", None)
    kl_guard_action: Literal["warn", "stop"] = doc("what to do when the KL guard trips", "warn")


@dataclass
class TrainConfig:
    run_name: str = doc("name of the run folder under output_dir", "run")
    output_dir: str = doc("where runs/<run_name>/ goes", "runs")
    steps: int = doc("number of GRPO steps", 20)
    prompts_per_step: int = doc("prompts per step (B); completions = B * G", 4)
    seed: int = doc("global seed (torch, sampling, data order)", 0)
    save_every: int = doc("checkpoint every N steps (0 = only at the end)", 0)
    keep_checkpoints: int = doc("how many checkpoints to keep", 2)
    resume: bool = doc("continue from the latest checkpoint in the run folder", False)
    eval_every: int = doc("held-out evaluation every N steps (0 = before and after only)", 0)
    eval_samples: int = doc("samples per held-out prompt in eval (pass@1 averages them)", 1)
    eval_temperature: float = doc("temperature for held-out evaluation (0 = greedy)", 0.0)
    tensorboard: bool = doc("write TensorBoard logs", True)
    wandb: bool = doc("log to Weights & Biases (needs wandb installed and a network)", False)
    plots: bool = doc("write PNG plots at the end", True)


@dataclass
class RunConfig:
    model: ModelConfig = doc("policy model", factory=ModelConfig)
    data: DataConfig = doc("prompts and gold answers", factory=DataConfig)
    rollout: RolloutConfig = doc("generation", factory=RolloutConfig)
    rewards: RewardsConfig = doc("reward functions", factory=RewardsConfig)
    algo: AlgoConfig = doc("GRPO algorithm family", factory=AlgoConfig)
    optim: OptimConfig = doc("optimiser and micro-batching", factory=OptimConfig)
    moe: MoEConfig = doc("MoE-specific RL controls", factory=MoEConfig)
    train: TrainConfig = doc("loop, logging, checkpoints", factory=TrainConfig)
