"""Web search providers behind one interface, with results normalised to title/url/snippet.

Supported: SearXNG (`GET /search?format=json`), Brave Search API (`GET /res/v1/web/search` with the
`X-Subscription-Token` header) and Tavily (`POST /search`). Keys are held as `SecretStr` and error
messages are scrubbed of them, so they never reach logs or the model; so are the credentials of an
endpoint URL (`http://user:password@searx.internal`, sent as basic auth).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, SecretStr

from qwq_agent.charsets import known_charset
from qwq_agent.tools.web.inflate import ACCEPT_ENCODING, BodyEncodingError, read_capped
from qwq_agent.urls import is_http_url, redact_url, redact_urls_in

BRAVE_BASE_URL = "https://api.search.brave.com"
TAVILY_BASE_URL = "https://api.tavily.com"
# A page of results is tens of kilobytes; a reply past this is read no further (decoded bytes).
MAX_REPLY_BYTES = 2_000_000
# Of an error reply, only this much is read and decoded: 300 characters of it are shown. A key the reply
# quotes back within those is whole in what is decoded (at least 1,024 characters, 4 bytes to the
# character at worst), so it is still scrubbed.
_ERROR_BYTES = 4_096


class SearchResult(BaseModel):
    """One web result, whatever the provider."""

    title: str
    url: str
    snippet: str = ""


class SearchError(Exception):
    """A provider failed; the message is safe to show (no keys)."""


class SearchProvider(Protocol):
    """Anything that turns a query into normalised results."""

    name: str

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[SearchResult]: ...


class SearxngProvider(BaseModel):
    """A SearXNG instance with the JSON output format enabled (`search.formats: [html, json]`)."""

    name: str = "searxng"
    base_url: str

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[SearchResult]:
        data = await _request(
            client, "GET", _join(self.base_url, "/search"), params={"q": query, "format": "json"}, secrets=()
        )
        return _normalise(data.get("results"), "url", "title", ("content",))[:count]


class BraveProvider(BaseModel):
    """Brave Search API, web results."""

    name: str = "brave"
    api_key: SecretStr
    base_url: str = BRAVE_BASE_URL

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[SearchResult]:
        key = self.api_key.get_secret_value()
        data = await _request(
            client,
            "GET",
            _join(self.base_url, "/res/v1/web/search"),
            params={"q": query, "count": min(count, 20)},
            headers={"X-Subscription-Token": key, "Accept": "application/json"},
            secrets=(key,),
        )
        web = data.get("web") or {}
        return _normalise(web.get("results"), "url", "title", ("description",))[:count]


class TavilyProvider(BaseModel):
    """Tavily search API."""

    name: str = "tavily"
    api_key: SecretStr
    base_url: str = TAVILY_BASE_URL

    async def search(self, client: httpx.AsyncClient, query: str, count: int) -> list[SearchResult]:
        key = self.api_key.get_secret_value()
        # The key goes as a Bearer token (current API) and in the body (older API versions).
        data = await _request(
            client,
            "POST",
            _join(self.base_url, "/search"),
            json={"api_key": key, "query": query, "max_results": min(count, 20)},
            headers={"Authorization": f"Bearer {key}"},
            secrets=(key,),
        )
        return _normalise(data.get("results"), "url", "title", ("content",))[:count]


# The variable each provider's URL comes from, to name it when it is no URL.
_URL_VARS = {"searxng": "QWQ_SEARXNG_URL", "brave": "QWQ_BRAVE_BASE_URL", "tavily": "QWQ_TAVILY_BASE_URL"}


def _checked_url(provider: SearxngProvider | BraveProvider | TavilyProvider) -> SearchProvider:
    """`provider`, whose URL must be http(s)://: found here (the start-up check), not at the model's
    first search, as an httpx error about a missing protocol."""
    url = provider.base_url.strip()
    if not is_http_url(url):
        raise SearchError(f"{_URL_VARS[provider.name]}={redact_url(url)} is not an http:// or https:// URL")
    return provider


def provider_from_env(env: Mapping[str, str] | None = None, name: str | None = None) -> SearchProvider:
    """Choose a provider from the environment.

    `QWQ_SEARCH_PROVIDER` (or `name`) picks one of searxng/brave/tavily; otherwise the first configured
    of `QWQ_SEARXNG_URL`, `BRAVE_API_KEY`, `TAVILY_API_KEY` is used. `QWQ_BRAVE_BASE_URL` and
    `QWQ_TAVILY_BASE_URL` override the API endpoints (proxies, tests).
    """
    if env is None:
        from qwq_agent.settings import get_settings

        env = get_settings().search_env()
    wanted = (name or env.get("QWQ_SEARCH_PROVIDER") or "").strip().lower()
    builders = {
        "searxng": lambda: (
            SearxngProvider(base_url=env["QWQ_SEARXNG_URL"]) if env.get("QWQ_SEARXNG_URL") else None
        ),
        "brave": lambda: (
            BraveProvider(
                api_key=SecretStr(env["BRAVE_API_KEY"]),
                base_url=env.get("QWQ_BRAVE_BASE_URL") or BRAVE_BASE_URL,
            )
            if env.get("BRAVE_API_KEY")
            else None
        ),
        "tavily": lambda: (
            TavilyProvider(
                api_key=SecretStr(env["TAVILY_API_KEY"]),
                base_url=env.get("QWQ_TAVILY_BASE_URL") or TAVILY_BASE_URL,
            )
            if env.get("TAVILY_API_KEY")
            else None
        ),
    }
    if wanted:
        if wanted not in builders:
            raise SearchError(f"unknown search provider {wanted!r}; choose one of {', '.join(builders)}")
        provider = builders[wanted]()
        if provider is None:
            needs = {"searxng": "QWQ_SEARXNG_URL", "brave": "BRAVE_API_KEY", "tavily": "TAVILY_API_KEY"}[
                wanted
            ]
            raise SearchError(f"search provider {wanted!r} needs {needs} to be set")
        return _checked_url(provider)
    for build in builders.values():
        provider = build()
        if provider is not None:
            return _checked_url(provider)
    raise SearchError(
        "no web search provider configured: set QWQ_SEARXNG_URL, BRAVE_API_KEY or TAVILY_API_KEY"
    )


async def _request(
    client: httpx.AsyncClient, method: str, url: str, *, secrets: tuple[str, ...], **kwargs: Any
) -> dict[str, Any]:
    # Only the codings `read_capped` decodes, a bounded slice at a time: httpx's own decoding inflated
    # a 492-byte `gzip, gzip` reply to 465 MB before the cap could be checked.
    kwargs["headers"] = {**(kwargs.get("headers") or {}), "Accept-Encoding": ACCEPT_ENCODING}
    try:
        async with client.stream(method, url, **kwargs) as response:
            status, charset = response.status_code, response.charset_encoding
            # Of an error reply only the start is shown, so only the start is read.
            body, cut = await read_capped(response, _ERROR_BYTES if status >= 400 else MAX_REPLY_BYTES)
    except BodyEncodingError as exc:
        raise SearchError(_scrub(f"search provider's reply cannot be read: it sent {exc}", secrets)) from None
    except httpx.TimeoutException:
        raise SearchError(_scrub(f"search request to {redact_url(url)} timed out", secrets)) from None
    except httpx.HTTPError as exc:
        detail = redact_urls_in(f"{type(exc).__name__}: {exc}")  # httpx may quote the URL
        raise SearchError(_scrub(f"search request to {redact_url(url)} failed: {detail}", secrets)) from None
    if cut and status < 400:
        raise SearchError(f"search provider's reply is larger than {MAX_REPLY_BYTES:,} bytes")
    if status >= 400:
        # Scrubbed before it is cut: a key straddling the cut would keep its first characters. Only
        # the start is decoded, with a codec a page may name (punycode, quadratic, took minutes on
        # the event loop for 2 MB; idna and rot13 raised out of the tool): else UTF-8.
        text = body.decode(known_charset(charset) or "utf-8", errors="replace")
        detail = _scrub(text, secrets)[:300].strip()
        raise SearchError(_scrub(f"search provider answered HTTP {status}: {detail}", secrets))
    try:
        data = json.loads(body)  # JSON's own UTF-8/16/32 detection, as httpx's .json() does
    except (ValueError, RecursionError):
        raise SearchError("search provider answered with something that is not JSON") from None
    if not isinstance(data, dict):
        raise SearchError("search provider answered with unexpected JSON (not an object)")
    return data


def _normalise(items: Any, url_key: str, title_key: str, snippet_keys: tuple[str, ...]) -> list[SearchResult]:
    results: list[SearchResult] = []
    for item in items or []:
        if not isinstance(item, dict) or not item.get(url_key):
            continue
        snippet = next((str(item[k]) for k in snippet_keys if item.get(k)), "")
        results.append(
            SearchResult(
                title=str(item.get(title_key) or item[url_key]),
                url=str(item[url_key]),
                snippet=_strip_tags(snippet),
            )
        )
    return results


def _strip_tags(text: str) -> str:
    # Brave marks matches with <strong>; the model needs the words only.
    import re

    return re.sub(r"</?[a-zA-Z][^>]{0,40}>", "", text).strip()


def _scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


def _join(base: str, path: str) -> str:
    return base.rstrip("/") + path
