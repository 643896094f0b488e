"""The `web_search` tool: query the configured provider and list results with their URLs."""

from __future__ import annotations

import asyncio

import httpx
from pydantic import BaseModel, ConfigDict, Field

from qwq_agent.protocols import ToolContext, ToolOutput
from qwq_agent.tools.base import ModelTool
from qwq_agent.tools.web.providers import SearchError, SearchProvider, SearchResult, provider_from_env


class WebSearchArgs(BaseModel):
    """Arguments of `web_search`."""

    model_config = ConfigDict(extra="forbid")  # a misspelt argument is an error, not silently ignored

    query: str = Field(min_length=1, max_length=400, description="What to search the web for.")
    count: int = Field(default=8, ge=1, le=20, description="How many results to return.")


class WebSearch(ModelTool[WebSearchArgs]):
    """Search the web through one provider (SearXNG, Brave or Tavily); see `provider_from_env`.

    The provider is resolved lazily so building the tool never fails; a missing configuration is
    reported to the model as an error observation when the tool is called.
    """

    name = "web_search"
    description = (
        "Search the web. Returns numbered results with title, URL and snippet; use fetch_url to "
        "read a page and cite its URL."
    )
    Args = WebSearchArgs

    def __init__(self, provider: SearchProvider | None = None, *, timeout_s: float = 15.0) -> None:
        """`timeout_s` bounds the whole search, reading the reply included."""
        self._provider = provider
        self.timeout_s = timeout_s

    async def run(self, args: WebSearchArgs, context: ToolContext) -> ToolOutput:
        try:
            provider = self._provider or provider_from_env()
            # httpx's timeout bounds each read; this bounds the whole search (a provider could drip).
            async with asyncio.timeout(self.timeout_s):
                async with httpx.AsyncClient(timeout=self.timeout_s, trust_env=False) as client:
                    results = await provider.search(client, args.query, args.count)
        except SearchError as exc:
            return ToolOutput(text=f"web_search failed: {exc}", is_error=True)
        except TimeoutError:
            return ToolOutput(
                text=f"web_search failed: the search took longer than {self.timeout_s:g} s", is_error=True
            )
        return ToolOutput(
            text=format_results(args.query, results),
            metadata={"provider": provider.name, "results": [r.model_dump() for r in results]},
        )


def format_results(query: str, results: list[SearchResult]) -> str:
    """Numbered results, each with its URL on its own line so it can be cited or fetched."""
    if not results:
        return f"No web results for {query!r}. Try other words."
    lines = [f"{len(results)} web results for {query!r}:"]
    for i, r in enumerate(results, 1):
        lines.append(f"\n[{i}] {r.title}\n    {r.url}")
        if r.snippet:
            lines.append(f"    {r.snippet}")
    return "\n".join(lines)
