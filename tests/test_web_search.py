"""web_search against real HTTP servers on 127.0.0.1 answering in each provider's documented format."""

from __future__ import annotations

import json
import logging
import threading
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from qwq_agent.protocols import ToolContext
from qwq_agent.tools.web.providers import (
    BraveProvider,
    SearchError,
    SearxngProvider,
    TavilyProvider,
    provider_from_env,
)
from qwq_agent.tools.web_search import WebSearch

CTX = ToolContext()
BRAVE_KEY = "BSA-test-key-0123456789"
TAVILY_KEY = "tvly-test-key-abcdef"

SEARXNG_BODY = {
    "query": "sun diameter",
    "number_of_results": 2,
    "results": [
        {"url": "https://a.example/sun", "title": "Sun - A", "content": "The Sun is 1.39 million km wide.",
         "engine": "duckduckgo", "score": 1.0},
        {"url": "https://b.example/star", "title": "Stars", "content": "", "engine": "bing"},
        {"title": "no url here"},
    ],
    "answers": [], "corrections": [], "infoboxes": [], "suggestions": [], "unresponsive_engines": [],
}  # fmt: skip
BRAVE_BODY = {
    "type": "search",
    "query": {"original": "sun diameter"},
    "web": {
        "type": "search",
        "results": [
            {"title": "Sun facts", "url": "https://c.example/facts", "type": "search_result",
             "description": "The <strong>Sun</strong> is a star.", "age": "1 day ago"},
        ],
    },
}  # fmt: skip
TAVILY_BODY = {
    "query": "sun diameter",
    "answer": None,
    "images": [],
    "results": [
        {"title": "NASA Sun", "url": "https://d.example/nasa", "content": "Diameter 1,392,700 km.", "score": 0.98,
         "raw_content": None},
    ],
    "response_time": 1.2,
}  # fmt: skip


class ApiServer:
    """Answers like the three providers; records each request (path, query, headers, body)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.error_padding = 0  # characters of the failure body before it quotes the key
        self.snippet_padding = 0  # characters added to the first result's snippet
        self.drip = 0.0  # seconds between the 20 pieces the reply is sent in
        self.raw_failure: tuple[str, bytes] | None = None  # (Content-Type, body) of an HTTP 500
        self.raw_reply: tuple[dict[str, str], bytes] | None = None  # (headers, body) of an HTTP 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _reply(self, body: Any, status: int = 200) -> None:
                if outer.snippet_padding and "results" in body:
                    body = json.loads(json.dumps(body))
                    body["results"][0]["content"] += "x" * outer.snippet_padding
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                # Dripped: 20 pieces, each well within a read timeout, the whole taking long.
                step = len(data) // 20 + 1 if outer.drip else len(data)
                try:
                    for start in range(0, len(data), step):
                        self.wfile.write(data[start : start + step])
                        self.wfile.flush()
                        time.sleep(outer.drip)
                except OSError:
                    pass  # the client stopped reading, as it should

            def _record(self, body: bytes = b"") -> dict[str, Any]:
                parts = urlsplit(self.path)
                req = {"path": parts.path, "query": parse_qs(parts.query), "headers": dict(self.headers),
                       "body": json.loads(body) if body else None}  # fmt: skip
                outer.requests.append(req)
                return req

            def do_GET(self) -> None:
                req = self._record()
                if outer.raw_reply:
                    headers, data = outer.raw_reply
                    self.send_response(200)
                    for name, value in {"Content-Length": str(len(data)), **headers}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    try:
                        self.wfile.write(data)
                    except OSError:
                        pass  # the client stopped reading, as it should
                elif outer.raw_failure:
                    content_type, data = outer.raw_failure
                    self.send_response(500)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        self.wfile.write(data)
                    except OSError:
                        pass  # only the start of an error reply is read
                elif outer.fail_with:
                    self._reply(
                        {
                            "error": "x" * outer.error_padding
                            + f"bad token {req['headers'].get('X-Subscription-Token')}"
                        },
                        outer.fail_with,
                    )
                elif req["path"] == "/search" and req["query"].get("format") == ["json"]:
                    self._reply(SEARXNG_BODY)
                elif req["path"] == "/res/v1/web/search":
                    if req["headers"].get("X-Subscription-Token") != BRAVE_KEY:
                        self._reply({"error": "unauthorized"}, 401)
                    else:
                        self._reply(BRAVE_BODY)
                else:
                    self._reply({"error": "not found"}, 404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                req = self._record(body)
                if req["path"] == "/search" and req["headers"].get("Authorization") == f"Bearer {TAVILY_KEY}":
                    self._reply(TAVILY_BODY)
                else:
                    self._reply({"detail": {"error": "Unauthorized"}}, 401)

            def log_message(self, *args: object) -> None:
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except ConnectionError:
                    pass  # the client hung up once it had read what it wanted, as it should

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def api() -> Iterator[ApiServer]:
    srv = ApiServer()
    yield srv
    srv.close()


async def test_searxng_results_are_normalised(api: ApiServer) -> None:
    out = await WebSearch(SearxngProvider(base_url=api.base))({"query": "sun diameter"}, CTX)
    assert not out.is_error, out.text
    assert api.requests[0]["query"] == {"q": ["sun diameter"], "format": ["json"]}
    assert out.metadata["results"] == [
        {"title": "Sun - A", "url": "https://a.example/sun", "snippet": "The Sun is 1.39 million km wide."},
        {"title": "Stars", "url": "https://b.example/star", "snippet": ""},
    ]
    assert "[1] Sun - A\n    https://a.example/sun\n    The Sun is 1.39 million km wide." in out.text


async def test_brave_sends_token_header_and_strips_markup(api: ApiServer) -> None:
    provider = BraveProvider(api_key=BRAVE_KEY, base_url=api.base)
    out = await WebSearch(provider)({"query": "sun diameter", "count": 3}, CTX)
    assert not out.is_error, out.text
    req = api.requests[0]
    assert req["headers"]["X-Subscription-Token"] == BRAVE_KEY
    assert req["query"]["count"] == ["3"]
    assert out.metadata["results"] == [
        {"title": "Sun facts", "url": "https://c.example/facts", "snippet": "The Sun is a star."}
    ]
    assert BRAVE_KEY not in out.text and BRAVE_KEY not in repr(provider)


async def test_tavily_posts_query_with_key(api: ApiServer) -> None:
    out = await WebSearch(TavilyProvider(api_key=TAVILY_KEY, base_url=api.base))(
        {"query": "sun diameter"}, CTX
    )
    assert not out.is_error, out.text
    req = api.requests[0]
    assert req["body"]["query"] == "sun diameter" and req["body"]["max_results"] == 8
    assert out.metadata["results"][0]["url"] == "https://d.example/nasa"
    assert "Diameter 1,392,700 km." in out.text


async def test_provider_errors_never_echo_the_key(api: ApiServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api.fail_with = 403  # the server's error body quotes the key back
    out = await WebSearch(BraveProvider(api_key=BRAVE_KEY, base_url=api.base))({"query": "x"}, CTX)
    assert out.is_error and "HTTP 403" in out.text
    assert BRAVE_KEY not in out.text
    assert BRAVE_KEY not in caplog.text
    bad = await WebSearch(TavilyProvider(api_key="tvly-wrong-secret", base_url=api.base))({"query": "x"}, CTX)
    assert bad.is_error and "401" in bad.text and "tvly-wrong-secret" not in bad.text


async def test_a_key_straddling_the_cut_of_an_error_body_leaves_no_part_of_it(api: ApiServer) -> None:
    # The body was cut to 300 characters and then scrubbed: the key, cut in two, no longer matched.
    api.fail_with = 403
    api.error_padding = 300 - len('{"error": "bad token ') - 5  # the key starts 5 characters before the cut
    out = await WebSearch(BraveProvider(api_key=BRAVE_KEY, base_url=api.base))({"query": "x"}, CTX)
    assert out.is_error and "HTTP 403" in out.text and "bad token ***" in out.text
    assert BRAVE_KEY[:4] not in out.text


@pytest.mark.parametrize("charset", ["punycode", "idna", "undefined", "rot13", "utf-7"])
async def test_an_error_reply_in_a_codec_no_page_is_in_is_read_as_utf_8_and_only_its_start(
    api: ApiServer, charset: str
) -> None:
    # The error body was decoded whole with any codec it named, on the event loop: punycode is
    # quadratic (this 200 KB: ~2 s; 2 MB: minutes, and the search's timeout cannot fire), idna,
    # `undefined` and rot13 raised out of the tool. fetch_url's deny-list applies, to 4 KB of it.
    api.raw_failure = (f"text/plain; charset={charset}", b"a" * 100_000 + b"-" + b"b" * 100_000)
    started = time.monotonic()
    out = await WebSearch(SearxngProvider(base_url=api.base), timeout_s=5.0)({"query": "x"}, CTX)
    took = time.monotonic() - started
    assert out.is_error and "search provider answered HTTP 500: aaaa" in out.text, out.text[:200]
    assert took < 1, took


async def test_unreachable_provider_is_a_clear_error(api: ApiServer) -> None:
    base = api.base
    api.close()
    out = await WebSearch(SearxngProvider(base_url=base))({"query": "x"}, CTX)
    assert out.is_error and "search request to" in out.text


async def test_a_huge_or_dripping_provider_reply_is_cut_off(api: ApiServer) -> None:
    from qwq_agent.tools.web.providers import MAX_REPLY_BYTES

    # The reply was read whole however large, and httpx's timeout bounds each read only: a provider
    # dripping its answer kept the call going as long as it liked (the registry's limit aside).
    api.snippet_padding = MAX_REPLY_BYTES
    huge = await WebSearch(SearxngProvider(base_url=api.base))({"query": "x"}, CTX)
    assert huge.is_error and f"larger than {MAX_REPLY_BYTES:,} bytes" in huge.text, huge.text[:200]
    api.snippet_padding = 0
    api.drip = 0.2  # 20 pieces, 4 s in all
    started = time.monotonic()
    slow = await WebSearch(SearxngProvider(base_url=api.base), timeout_s=1.0)({"query": "x"}, CTX)
    assert slow.is_error and "took longer than 1 s" in slow.text, slow.text[:200]
    assert time.monotonic() - started < 3


def _gzip(data: bytes, wbits: int = 31) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


async def test_a_compressed_reply_is_inflated_under_the_cap_and_stacked_encodings_are_refused(
    api: ApiServer,
) -> None:
    from qwq_agent.tools.web.providers import MAX_REPLY_BYTES

    # httpx inflated each network chunk whole (stacked `gzip, gzip` too) before the cap was checked:
    # a 492-byte reply became 465 MB in memory. fetch_url's bounded inflater reads it now.
    inner = _gzip(b"\0" * (64 * 1024 * 1024))
    cases = [
        ({"Content-Encoding": "gzip, gzip"}, _gzip(inner), "stacked content encodings"),
        ({"Content-Encoding": "gzip"}, inner, f"larger than {MAX_REPLY_BYTES:,} bytes"),
        ({"Content-Encoding": "br"}, b"\x0b\x02\x80{}\x03", "unsupported content encoding 'br'"),
        ({"Content-Encoding": "gzip"}, b"\x1f\x8bnot gzip", "corrupt"),
    ]
    for headers, body, expected in cases:
        api.raw_reply = ({"Content-Type": "application/json", **headers}, body)
        tracemalloc.start()
        try:
            out = await WebSearch(SearxngProvider(base_url=api.base))({"query": "x"}, CTX)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out.is_error and expected in out.text, out.text[:200]
        assert peak < 4 * MAX_REPLY_BYTES, (expected, peak)
    assert api.requests[-1]["headers"]["Accept-Encoding"] == "gzip, deflate"  # only what is decoded here
    for coding, body in (("gzip", _gzip(json.dumps(SEARXNG_BODY).encode())),
                         ("deflate", _gzip(json.dumps(SEARXNG_BODY).encode(), -15))):  # fmt: skip
        api.raw_reply = ({"Content-Type": "application/json", "Content-Encoding": coding}, body)
        out = await WebSearch(SearxngProvider(base_url=api.base))({"query": "x"}, CTX)
        assert not out.is_error and "https://a.example/sun" in out.text, out.text[:200]


async def test_invalid_arguments_are_reported() -> None:
    out = await WebSearch(SearxngProvider(base_url="http://127.0.0.1:9"))({"query": "", "count": 99}, CTX)
    assert out.is_error and "query" in out.text and "count" in out.text


def test_provider_chosen_from_environment() -> None:
    env = {
        "BRAVE_API_KEY": BRAVE_KEY,
        "TAVILY_API_KEY": TAVILY_KEY,
        "QWQ_TAVILY_BASE_URL": "http://127.0.0.1:1",
    }
    assert isinstance(provider_from_env(env), BraveProvider)
    tavily = provider_from_env({**env, "QWQ_SEARCH_PROVIDER": "tavily"})
    assert isinstance(tavily, TavilyProvider) and tavily.base_url == "http://127.0.0.1:1"
    searx = provider_from_env({**env, "QWQ_SEARXNG_URL": "http://127.0.0.1:8888"})
    assert isinstance(searx, SearxngProvider)
    with pytest.raises(SearchError, match="no web search provider"):
        provider_from_env({})
    with pytest.raises(SearchError, match="needs TAVILY_API_KEY"):
        provider_from_env({"QWQ_SEARCH_PROVIDER": "tavily"})
    with pytest.raises(SearchError, match="unknown search provider"):
        provider_from_env({"QWQ_SEARCH_PROVIDER": "bing"})
    # A URL that is no http(s):// URL is refused when the provider is chosen (the start-up check),
    # naming its variable, not at the model's first search.
    with pytest.raises(SearchError, match="QWQ_SEARXNG_URL=notaurl is not an http:// or https:// URL"):
        provider_from_env({"QWQ_SEARXNG_URL": "notaurl"})
    with pytest.raises(SearchError, match=r"QWQ_TAVILY_BASE_URL=ftp://u:\*\*\*@h is not"):
        provider_from_env({**env, "QWQ_SEARCH_PROVIDER": "tavily", "QWQ_TAVILY_BASE_URL": "ftp://u:pw@h"})


async def test_unconfigured_tool_reports_how_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("QWQ_SEARXNG_URL", "BRAVE_API_KEY", "TAVILY_API_KEY", "QWQ_SEARCH_PROVIDER"):
        monkeypatch.delenv(var, raising=False)
    out = await WebSearch()({"query": "x"}, CTX)
    assert out.is_error and "QWQ_SEARXNG_URL" in out.text
