"""VLLMServerEngine against a real vLLM server process started on 127.0.0.1 (one per session)."""

from __future__ import annotations

import pytest

from grpo.errors import EngineError
from grpo.models.loader import load_causal_lm
from rollouts import SamplingConfig
from rollouts.reference import max_logprob_error
from rollouts.server_engine import VLLMServerEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMPTS = ["What is 12 + 7?", [{"role": "user", "content": "Name a colour."}], "Count to five:"]
G = 4


@pytest.fixture(scope="module")
def server(vllm_server, tiny_dirs):
    # The MoE model: also covers the CPU expert repack after a reload inside the server.
    return vllm_server(tiny_dirs["mixtral"])


def test_server_generates_groups_with_matching_logprobs(server, tiny_dirs):
    assert server.patched, "our worker extension is active in the servers we start"
    out = server.generate(PROMPTS, G, SamplingConfig(temperature=0.8, max_tokens=20))
    assert [c.prompt_index for c in out] == [i for i in range(len(PROMPTS)) for _ in range(G)]
    assert all(len(c.logprobs) == len(c.completion_ids) >= 1 for c in out)
    assert max_logprob_error(load_causal_lm(tiny_dirs["mixtral"]), out, 0.8) < 1e-3


def test_server_weight_update_then_restore(server, tiny_dirs, restore_weights):
    trainer = load_causal_lm(tiny_dirs["mixtral"])
    with __import__("torch").no_grad():
        for p in trainer.parameters():
            p.mul_(1.05).add_(0.01)
    s = SamplingConfig(temperature=1.0, max_tokens=20)
    with restore_weights(server):
        server.update_weights(trainer.named_parameters())
        out = server.generate(PROMPTS, G, s)
        assert max_logprob_error(trainer, out, 1.0) < 1e-3
        assert not list(server.weights_dir.glob("*.safetensors")), "the pushed file is removed from RAM"
    restored = server.generate(PROMPTS, G, s)
    assert max_logprob_error(load_causal_lm(tiny_dirs["mixtral"]), restored, 1.0) < 1e-3


def test_server_seeds_reproduce(server):
    a = server.generate(PROMPTS, G, SamplingConfig(max_tokens=12, seed=5))
    b = server.generate(PROMPTS, G, SamplingConfig(max_tokens=12, seed=5))
    assert [x.completion_ids for x in a] == [x.completion_ids for x in b]
    assert len({tuple(x.completion_ids) for x in a[:G]}) > 1


def test_existing_server_url(server, tiny_dirs):
    client = VLLMServerEngine(tiny_dirs["mixtral"], server_url=server.url, max_model_len=512)
    try:
        assert client.server is None and client.patched
        assert len(client.generate(PROMPTS[:1], 2, SamplingConfig(max_tokens=4))) == 2
        with pytest.raises(EngineError, match="use engine kind 'vllm'"):
            client.generate(PROMPTS[:1], 2, SamplingConfig(max_tokens=4), return_routing=True)
    finally:
        client.shutdown()  # a client of someone else's server does not stop it
    assert server.server.alive()
