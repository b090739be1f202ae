"""Generation engines behind one interface (rollouts.types.Engine).

    engine = make_engine("vllm", model_dir, max_model_len=1024, max_num_seqs=32, seed=0)
    completions = engine.generate(prompts, group_size=8, sampling=SamplingConfig(max_tokens=128),
                                  return_routing=True)      # B*G Completion records, prompt order
    with policy_weights(policy) as weights:                  # after each optimiser step
        engine.update_weights(weights)

Engines import vLLM / torch lazily: importing this package is cheap.
"""

from rollouts.factory import KINDS, make_engine
from rollouts.prompts import encode_prompts
from rollouts.types import NO_ROUTE, Completion, Engine, Prompt, SamplingConfig
from rollouts.weights import policy_weights

__all__ = [
    "KINDS", "NO_ROUTE", "Completion", "Engine", "Prompt", "SamplingConfig",
    "encode_prompts", "make_engine", "policy_weights",
]
