"""A scripted model server: real HTTP on 127.0.0.1, scripted output, SGLang's and OpenAI's wire formats.

It is a test double for the model's *intelligence* only. Everything on the wire is real: a client under
test opens TCP connections, reads chunked SSE bodies, sees real dropped connections and real 500s. A test
says what the model writes, turn by turn, in QwQ's raw output format::

    async with ScriptedModelServer(turns=["2+2 is 4\\n</think>\\n\\n4"]) as server:
        client = SGLangClient(server.url)
        ...
        assert "2+2" in server.requests[0].prompt

A turn is a string, a `Turn` (text plus faults: a 500, a slow first token, a connection dropped or a
malformed event after N tokens, a stream held open until aborted, a stream that sends only SSE
keep-alive comments from some point on), or a callable receiving the
`ScriptedRequest` and returning either; `turns` itself may be such a callable, answering every request.
Prefix caching is simulated like a radix cache: `cached_tokens` is the longest common token prefix with any
sequence (prompt + output) served before, at most the prompt length minus one.

Sync code uses it as `with ScriptedModelServer(...) as server:` (it then runs in a thread of its own).
`python -m qwq_agent.testing.scripted_server --port N --text ...` runs it as a process (used by the tests of
`qwq-agent serve`).

Its parts live in `qwq_agent.testing.scripted`: the script (`script`), the model side (`model`), SGLang's
routes (`sglang_api`), OpenAI's (`openai_api`) and the HTTP server (`server`); this module is the face
tests import from, and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Sequence

from qwq_agent.testing.scripted.openai_api import split_raw_output
from qwq_agent.testing.scripted.script import (
    IM_END_ID,
    ScriptedRequest,
    ScriptExhausted,
    Turn,
    TurnSource,
)
from qwq_agent.testing.scripted.server import ScriptedModelServer

__all__ = [
    "IM_END_ID",
    "ScriptExhausted",
    "ScriptedModelServer",
    "ScriptedRequest",
    "Turn",
    "TurnSource",
    "main",
    "split_raw_output",
]


def main(argv: list[str] | None = None) -> int:
    """Run a scripted server as a process until SIGINT/SIGTERM (for launcher tests)."""
    import signal

    parser = argparse.ArgumentParser(description="Scripted model server (a test double)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--text", action="append", default=[], help="a turn (repeatable; cycles)")
    parser.add_argument(
        "--probe-answer",
        default=None,
        help="answer requests whose prompt ends with the loop detector's probe suffix with this text "
        "(answer-stability probes); other requests get the --text turns",
    )
    parser.add_argument("--model", default="Qwen/QwQ-32B")
    parser.add_argument("--max-total-num-tokens", type=int, default=18391)
    parser.add_argument(
        "--random-tokens",
        type=int,
        default=0,
        help="answer every request with this many random token ids, as a model with random weights does "
        "(its sampled splits are rarely the tokenizer's own): for benchmarks/agent_workload.py",
    )
    parser.add_argument("--unready-for", type=float, default=0.0, help="answer /health 503 this long (s)")
    parser.add_argument(
        "--exit-after", type=float, default=None, help="exit with status 3 after this long (s)"
    )
    args, _unknown = parser.parse_known_args(argv)  # launcher flags meant for SGLang are ignored

    async def serve() -> None:
        texts = args.text or ["scripted\n</think>\n\nok"]
        turns: Sequence[TurnSource] | Callable[[ScriptedRequest], str | Turn] = texts
        if args.random_tokens > 0:
            from qwq_agent.testing.random_turns import random_token_turns

            turns = random_token_turns(args.random_tokens)
        if args.probe_answer is not None:
            from qwq_agent.testing.probes import probe_aware

            turns = probe_aware(texts, args.probe_answer)
        server = ScriptedModelServer(
            turns,
            model=args.model,
            when_exhausted="repeat",
            max_total_num_tokens=args.max_total_num_tokens,
            ready=args.unready_for <= 0,
            host=args.host,
            port=args.port,
        )
        await server.start()
        print(f"scripted server on {server.url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.unready_for > 0:
            loop.call_later(args.unready_for, server.set_ready)
        if args.exit_after is not None:

            def crash() -> None:
                print("scripted server crashing on purpose", flush=True)
                stop.set()

            loop.call_later(args.exit_after, crash)
        await stop.wait()
        await server.stop()
        if args.exit_after is not None:
            raise SystemExit(3)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
