"""Scripted turns that look like a model with random weights: random token ids, not the tokenizer's splits.

`python -m qwq_agent.testing.scripted_server --random-tokens N` answers with these, so that
`benchmarks/agent_workload.py` (and its `exact` phase in `benchmarks/gpu_agent_workload.sh`) shows here the
cache behaviour it measures on the GPU: text re-tokenized from such output is not the ids that were generated.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from qwq_agent.testing.scripted.script import ScriptedRequest, Turn

__all__ = ["random_token_turns"]


def random_token_turns(count: int, seed: int = 0) -> Callable[[ScriptedRequest], Turn]:
    """Turns of `count` random ids of ordinary tokens that are whole UTF-8 text each (needs QwQ's tokenizer)."""
    from qwq_agent.agent.tokenizer import get_tokenizer

    tok = get_tokenizer()
    rng = random.Random(seed)

    def pick() -> int:
        while True:
            token = rng.randrange(0, 151643)
            try:
                tok.token_bytes(token).decode("utf-8")
            except UnicodeDecodeError:  # a byte-level piece of a character: the streamed text would differ
                continue
            return token

    return lambda request: Turn(ids=[pick() for _ in range(count)])
