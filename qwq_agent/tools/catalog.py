"""Tools by name, for the CLI and the examples: `build_tools(["python", "shell", ...])`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from qwq_agent.protocols import Tool

TOOL_NAMES = (
    "python",
    "shell",
    "str_replace_editor",
    "search_code",
    "search_docs",
    "web_search",
    "fetch_url",
)

# One line each, for `qwq-agent run --help`.
TOOL_SUMMARIES = {
    "python": "run Python in a persistent Jupyter kernel in the sandbox (plots come back as images)",
    "shell": "run a bash command in the sandbox",
    "str_replace_editor": "view, create and edit files in the sandbox's /workspace",
    "search_code": "ripgrep over the sandbox's /workspace",
    "search_docs": "search a local document index on the host (needs --docs-db)",
    "web_search": "search the web (SearXNG, Brave or Tavily, configured by environment variables)",
    "fetch_url": "fetch a web page as readable text, on the host (public addresses only)",
}


def build_tools(
    names: Iterable[str], *, docs_db: str | Path | None = None, allow_loopback_fetch: bool = False
) -> list[Tool]:
    """The named tools, ready to register; raises ValueError naming an unknown or unusable tool."""
    tools: list[Tool] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in ("python", "shell", "str_replace_editor"):
            from qwq_agent.tools import sandbox_tools

            tools.append(
                {"python": sandbox_tools.python_tool, "shell": sandbox_tools.shell_tool}.get(
                    name, sandbox_tools.editor_tool
                )
            )
        elif name == "search_code":
            from qwq_agent.tools.search_code import SearchCode

            tools.append(SearchCode())
        elif name == "search_docs":
            if docs_db is None:
                raise ValueError("search_docs needs a document index: build one with `qwq-agent index DIR`")
            from qwq_agent.tools.search_docs import SearchDocs

            tools.append(SearchDocs(docs_db))
        elif name == "web_search":
            from qwq_agent.tools.web_search import WebSearch

            tools.append(WebSearch())
        elif name == "fetch_url":
            from qwq_agent.tools.fetch_url import FetchUrl
            from qwq_agent.tools.netguard import AddressPolicy

            tools.append(FetchUrl(policy=AddressPolicy(allow_loopback=allow_loopback_fetch)))
        else:
            raise ValueError(f"unknown tool {name!r}; available: {', '.join(TOOL_NAMES)}")
    return tools
