"""Fakes for fault injection: a model-free generation engine, a faulty wrapper around any
engine, and a fake vLLM server process (stdlib only) that the real VLLMServerEngine talks to.

FakeEngine implements rollouts.types.Engine. Its completions are seeded random digit/letter
strings of the tiny char-level tokenizer; every `poison_every`-th completion (counted over
the engine's life) is the marker text POISON, so a reward can fault on exactly 1 sample in
`poison_every`, whatever the batch size.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

from rollouts.prompts import check_request, encode_prompts
from rollouts.types import Completion, Prompt, SamplingConfig

POISON = "POISON"


class FakeEngine:
    def __init__(self, model_dir: str | Path, *, seed: int = 0, poison_every: int = 0, poison_offset: int = 41,
                 max_model_len: int = 512):
        from grpo.models.loader import load_tokenizer

        self.tokenizer = load_tokenizer(Path(model_dir))
        self.seed, self.poison_every, self.poison_offset = seed, poison_every, poison_offset
        self.max_model_len = max_model_len
        self.served = 0  # completions produced over the engine's life
        self.poisoned = 0
        self.generate_calls = 0
        self.weight_updates = 0

    def generate(self, prompts: Sequence[Prompt], group_size: int, sampling: SamplingConfig,
                 return_routing: bool = False) -> list[Completion]:
        self.generate_calls += 1
        prompt_ids = encode_prompts(self.tokenizer, prompts)
        check_request(prompt_ids, group_size, sampling.max_tokens, self.max_model_len, sampling.temperature)
        rng = random.Random(f"{self.seed}-{sampling.seed}-{self.generate_calls if sampling.seed is None else 0}")
        out = []
        for i, ids in enumerate(prompt_ids):
            for _ in range(group_size):
                poison = self.poison_every and self.served % self.poison_every == self.poison_offset
                text = POISON if poison else "".join(rng.choice("0123456789abc ") for _ in range(
                    rng.randint(1, sampling.max_tokens)))
                text = text[: sampling.max_tokens]
                toks = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                out.append(Completion(prompt_index=i, prompt_ids=list(ids), completion_ids=list(toks),
                                      logprobs=[-2.5] * len(toks), text=text,
                                      finish_reason="length" if len(toks) >= sampling.max_tokens else "stop"))
                self.served += 1
                self.poisoned += bool(poison)
        return out

    def update_weights(self, named_tensors: Iterable[tuple[str, object]]) -> None:
        for _ in named_tensors:
            pass
        self.weight_updates += 1

    def shutdown(self) -> None:
        pass


class EngineDied(RuntimeError):
    pass


class FaultyEngine:
    """Delegates to `inner`; the `fail_generate_at`-th generate call (1-based) or the
    `fail_update_at`-th update_weights call raises `error` (the engine "died")."""

    def __init__(self, inner, fail_generate_at: int | None = None, fail_update_at: int | None = None,
                 error: BaseException | None = None):
        self.inner, self.fail_generate_at, self.fail_update_at = inner, fail_generate_at, fail_update_at
        self.error = error or EngineDied("generation engine process died (injected fault)")
        self.generate_calls = self.update_calls = 0

    def generate(self, *args, **kwargs):
        self.generate_calls += 1
        if self.generate_calls == self.fail_generate_at:
            raise self.error
        return self.inner.generate(*args, **kwargs)

    def update_weights(self, named_tensors):
        self.update_calls += 1
        if self.update_calls == self.fail_update_at:
            raise self.error
        return self.inner.update_weights(named_tensors)

    def shutdown(self) -> None:
        self.inner.shutdown()


FAKE_SERVER = r'''
import json, os, random, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

die_at = int(sys.argv[1])  # SIGKILL itself on this /v1/completions request (0 = never)
vocab = list(range(int(sys.argv[2]), int(sys.argv[3])))
count = 0

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply({})

    def do_POST(self):
        global count
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path != "/v1/completions":
            return self._reply({})
        count += 1
        if count == die_at:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-request: the client sees the connection drop
        rng = random.Random(req.get("seed", 0))
        choices = []
        for k in range(req.get("n", 1)):
            ids = [rng.choice(vocab) for _ in range(rng.randint(1, req.get("max_tokens", 8)))]
            choices.append({"index": k, "token_ids": ids, "logprobs": {"token_logprobs": [-2.5] * len(ids)},
                            "finish_reason": "length", "stop_reason": None})
        self._reply({"choices": choices})

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
'''


class FakeServer:
    """A process answering the HTTP calls VLLMServerEngine makes; it SIGKILLs itself on the
    `die_at`-th completion request (a vLLM server crashing mid-step)."""

    def __init__(self, die_at: int = 0, vocab: tuple[int, int] = (5, 60)):
        self.proc = subprocess.Popen([sys.executable, "-c", FAKE_SERVER, str(die_at), str(vocab[0]), str(vocab[1])],
                                     stdout=subprocess.PIPE, text=True)
        port = int(self.proc.stdout.readline())
        self.url = f"http://127.0.0.1:{port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def wait_for(pred, timeout: float = 10.0, every: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return pred()
