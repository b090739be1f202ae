"""A reward that kills the generation server on its second call (step 2), to test
that a vanished server gives a clear error and leaves the last checkpoint intact."""

import os
import signal

CALLS = {"n": 0}


def kill_server_on_step_two(prompts, completions, **columns):
    CALLS["n"] += 1
    if CALLS["n"] == 3:  # call 1: eval before, call 2: step 1, call 3: step 2
        os.killpg(int(os.environ["GRPO_TEST_SERVER_PGID"]), signal.SIGKILL)
    return [float(len(c) % 2) for c in completions]
