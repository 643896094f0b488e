"""Research agent: searches a local document index, fetches a page, computes with Python, and answers
with citations. This machine has no internet, so the "web page" is served from examples/research/web on
127.0.0.1 and fetch_url is allowed to reach loopback for this example only."""

from __future__ import annotations

import functools
import http.server
import sys
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Example, main, tool_outputs
from recording import call, turn

from qwq_agent.docindex.store import DocIndex

HERE = Path(__file__).resolve().parent
TASK = (
    "Using my notes, estimate how many tokens of KV cache QwQ-32B can keep on one H200 if 90% of the "
    "GPU's memory may hold weights plus KV cache, and say which SGLang schedule policy suits agents. "
    "Cite your sources."
)
CODE = (
    "memory = 141e9 * 0.9          # H200 memory, 90% usable\n"
    "weights = 61 * 2**30          # QwQ-32B weights in BF16\n"
    "per_token = 2 * 64 * 8 * 128 * 2  # K and V, 64 layers, 8 KV heads, dim 128, 2 bytes\n"
    "tokens = (memory - weights) / per_token\n"
    "print(per_token, round(tokens))"
)


def turns(context: dict) -> list[str]:
    return [
        turn(
            "I need three facts: the H200's memory, QwQ-32B's KV cache per token and weight size, and the "
            "schedule policy. The first two should be in the notes; I'll search for both at once.",
            "Searching the notes.",
            call("search_docs", query="H200 memory"),
            call("search_docs", query="KV cache per token QwQ-32B"),
        ),
        turn(
            "hopper-gpus.md:8 gives 141 GB for the H200; kv-cache.md:1 gives 256 KiB per token and ~61 GiB of "
            "weights. The serving notes page should say which schedule policy to use.",
            "Reading the serving notes.",
            call("fetch_url", url=f"{context['base_url']}/sglang-notes.html"),
        ),
        turn(
            "The page recommends --schedule-policy lpm. Now the arithmetic, in Python rather than by hand.",
            "",
            call("python", code=CODE),
        ),
        turn(
            "262144 bytes per token and about 234,229 tokens.",
            "About **234,000 tokens** of KV cache: 90% of the H200's 141 GB is 126.9 GB; minus ~61 GiB of "
            "weights leaves ~61.4 GB, at 262,144 bytes (256 KiB) per token [1][2]. For agents, start SGLang "
            "with `--schedule-policy lpm`, which schedules requests sharing the longest cached prefix first "
            "[3].\n\n"
            "[1] hopper-gpus.md:8 (H200 SXM: 141 GB HBM3e)\n"
            "[2] kv-cache.md:1 (256 KiB per token, 61 GiB of weights)\n"
            f"[3] {context['base_url']}/sglang-notes.html",
        ),
    ]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@asynccontextmanager
async def setup():
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "docs.db"
        with DocIndex(db, root=HERE / "docs") as index:
            index.update()
        handler = functools.partial(_Quiet, directory=str(HERE / "web"))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield {
                "base_url": f"http://127.0.0.1:{server.server_port}",
                "tool_options": {"docs_db": db, "allow_loopback_fetch": True},
            }
        finally:
            server.shutdown()
            server.server_close()


async def check(result, sandbox) -> list[str]:
    problems = []
    outputs = "\n".join(tool_outputs(result))
    for needle in ("hopper-gpus.md:8", "kv-cache.md:1", "lpm", "262144 234229"):
        if needle not in outputs:
            problems.append(f"no tool output contains {needle!r}")
    for cite in ("hopper-gpus.md:8", "kv-cache.md:1", "sglang-notes.html"):
        if cite not in (result.answer or ""):
            problems.append(f"the answer does not cite {cite}")
    return problems


EXAMPLE = Example(
    name="research",
    task=TASK,
    tools=["search_docs", "fetch_url", "python"],
    turns=turns,
    check=check,
    setup=setup,
)

if __name__ == "__main__":
    sys.exit(main(EXAMPLE))
