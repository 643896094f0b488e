"""fetch_url against real HTTP servers on 127.0.0.1: extraction, caps, timeouts and address checks."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from qwq_agent.protocols import ToolContext
from qwq_agent.tools.fetch_url import FetchUrl
from qwq_agent.tools.netguard import AddressPolicy, AddressRefused, parse_ip_loose, resolve_checked
from qwq_agent.tools.web.fetch import FetchError, FetchLimits, guarded_get

Route = Callable[[BaseHTTPRequestHandler], None]
LOOPBACK_OK = AddressPolicy(allow_loopback=True)
CTX = ToolContext()


class Server:
    """A threaded HTTP server on a loopback address, answering from a dict of path -> handler."""

    def __init__(self, routes: dict[str, Route], host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes = routes
        self.hits: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.hits.append((self.path, dict(self.headers)))
                route = outer.routes.get(self.path.split("?", 1)[0])
                if route is None:
                    send(self, 404, "text/plain", b"not found")
                else:
                    route(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def send(handler: BaseHTTPRequestHandler, status: int, ctype: str, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    for k, v in headers.items():
        handler.send_header(k.replace("_", "-"), v)
    handler.end_headers()
    handler.wfile.write(body)


def redirect(location: str) -> Route:
    return lambda h: send(h, 302, "text/plain", b"", Location=location)


ARTICLE = b"""<!doctype html><html><head><title>Solar Facts</title><style>p{color:red}</style></head>
<body><nav><a href="/menu">Menu</a></nav><main><h1>The Sun</h1>
<p>The Sun is <b>1.39 million km</b> wide, see <a href="/diameter">diameter notes</a>
and <a href="https://example.org/sun">an external page</a>.</p>
<script>alert("x")</script></main><footer>copyright</footer></body></html>"""


@pytest.fixture
def server() -> Iterator[Server]:
    release = threading.Event()
    streamed: dict[str, int] = {"sent": 0}

    def big_stream(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(64 * 1024 * 1024))
        h.end_headers()
        chunk = b"x" * 65536
        try:
            for _ in range(1024):
                h.wfile.write(chunk)
                streamed["sent"] += len(chunk)
        except OSError:
            pass  # the client hung up, as it should

    def stall(h: BaseHTTPRequestHandler) -> None:
        release.wait(30)
        send(h, 200, "text/plain", b"late")

    def echo_host(h: BaseHTTPRequestHandler) -> None:
        send(h, 200, "text/plain", f"host={h.headers['Host']}".encode())

    routes: dict[str, Route] = {
        "/article": lambda h: send(h, 200, "text/html; charset=utf-8", ARTICLE),
        "/plain": lambda h: send(h, 200, "text/plain; charset=utf-8", "héllo plain wörld".encode()),
        "/data": lambda h: send(h, 200, "application/json", b'{"b": [1, 2], "a": "x"}'),
        "/image": lambda h: send(h, 200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
        "/missing": lambda h: send(h, 404, "text/plain", b"gone"),
        "/big": big_stream,
        "/stall": stall,
        "/host": echo_host,
        "/loop": redirect("/loop"),
        "/hop": redirect("/article"),
    }
    srv = Server(routes)
    srv.streamed = streamed  # type: ignore[attr-defined]
    yield srv
    release.set()
    srv.close()


async def test_html_page_becomes_readable_text_with_numbered_links(server: Server) -> None:
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/article")}, CTX)
    assert not out.is_error, out.text
    assert "Title: Solar Facts" in out.text
    assert "# The Sun" in out.text
    assert "1.39 million km" in out.text
    assert "diameter notes [1]" in out.text and "an external page [2]" in out.text
    assert f"[1] {server.url('/diameter')}" in out.text
    assert "[2] https://example.org/sun" in out.text
    # Page chrome and scripts are dropped.
    assert "Menu" not in out.text and "copyright" not in out.text and "alert" not in out.text


async def test_max_chars_bounds_the_title_and_link_urls_too(server: Server) -> None:
    # Only the body window was cut to max_chars: a 300 KB <title> or href was added whole (on every
    # offset of the page), and the whole title went into the trace's metadata.
    big = 300_000
    title_page = (
        b"<html><head><title>" + b"T" * big + b"</title></head><body><p>Real content.</p></body></html>"
    )
    link_page = (
        b'<html><body><p>See <a href="/'
        + b"x" * big
        + b'">this</a> and <a href="/b">that</a>.</p></body></html>'
    )
    server.routes["/long-title"] = lambda h: send(h, 200, "text/html; charset=utf-8", title_page)
    server.routes["/long-link"] = lambda h: send(h, 200, "text/html; charset=utf-8", link_page)
    tool = FetchUrl(policy=LOOPBACK_OK)
    titled = await tool({"url": server.url("/long-title"), "max_chars": 500}, CTX)
    assert len(titled.text) < 500 + 1_000, len(titled.text)
    assert f"[title cut at 300 of {big:,} characters]" in titled.text and "Real content." in titled.text
    assert len(titled.metadata["title"]) < 400
    linked = await tool({"url": server.url("/long-link"), "max_chars": 500}, CTX)
    assert len(linked.text) < 500 + 3_000, len(linked.text)
    assert "this [1] and that [2]" in linked.text
    assert f"[URL cut at 2,000 of {len(server.url('/')) + big:,} characters]" in linked.text
    assert f"[2] {server.url('/b')}" in linked.text
    # A short window holds many markers: the list of their URLs is bounded as a whole too.
    many = "".join(f'<a href="/{i}{"y" * 1_990}">{i}</a> ' for i in range(100)).encode()
    server.routes["/many"] = lambda h: send(
        h, 200, "text/html", b"<html><body><p>" + many + b"</p></body></html>"
    )
    listed = await tool({"url": server.url("/many"), "max_chars": 500}, CTX)
    assert len(listed.text) < 500 + 3 * 2_000 + 1_000, len(listed.text)
    assert "[1] " + server.url("/0y") in listed.text and "more links of this part not listed" in listed.text


async def test_plain_text_json_and_http_errors(server: Server) -> None:
    tool = FetchUrl(policy=LOOPBACK_OK)
    plain = await tool({"url": server.url("/plain")}, CTX)
    assert "héllo plain wörld" in plain.text and not plain.is_error
    data = await tool({"url": server.url("/data")}, CTX)
    assert '"b": [\n    1,' in data.text
    missing = await tool({"url": server.url("/missing")}, CTX)
    assert missing.is_error and "HTTP status: 404" in missing.text


async def test_deeply_nested_json_is_shown_as_it_came_not_re_indented_into_gigabytes(server: Server) -> None:
    # Re-indented, every value gets 2 spaces a level: 300 levels around 100,000 zeros (200 KB) became
    # 60 M characters, a 2 MB body 1.2 G (2.4 GB of host memory), all before the 12,000-character
    # window was cut. The pretty form is now built only while it stays a few times the body's size.
    depth = 300
    body = b"[" * depth + b"0," * 100_000 + b"0" + b"]" * depth
    server.routes["/deep.json"] = lambda h: send(h, 200, "application/json", body)
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/deep.json")}, CTX)
    assert not out.is_error, out.text[:300]
    assert out.metadata["chars"] == len(body)
    assert "[[[[0,0,0," in out.text and f"of {len(body)}; call fetch_url with offset=" in out.text


async def test_unsupported_content_type_is_refused_clearly(server: Server) -> None:
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/image")}, CTX)
    assert out.is_error
    assert "image/png" in out.text and "cannot be shown as text" in out.text


async def test_offset_pages_through_long_text(server: Server) -> None:
    tool = FetchUrl(policy=LOOPBACK_OK, limits=FetchLimits(max_bytes=5000))
    first = await tool({"url": server.url("/big"), "max_chars": 1000}, CTX)
    assert "call fetch_url with offset=1000" in first.text
    assert "incomplete" in first.text  # the byte cap note
    second = await tool({"url": server.url("/big"), "offset": 4500, "max_chars": 1000}, CTX)
    assert "x" * 500 in second.text and "offset=" not in second.text


async def test_size_cap_stops_the_download(server: Server) -> None:
    page = await guarded_get(server.url("/big"), policy=LOOPBACK_OK, limits=FetchLimits(max_bytes=100_000))
    assert page.truncated
    assert len(page.body) == 100_000
    server.close()  # wait for the handler to notice the hang-up
    assert server.streamed["sent"] < 64 * 1024 * 1024  # type: ignore[attr-defined]


async def test_timeout_gives_a_clear_error(server: Server) -> None:
    with pytest.raises(FetchError, match="timed out"):
        await guarded_get(server.url("/stall"), policy=LOOPBACK_OK, limits=FetchLimits(timeout_s=0.5))


async def test_redirects_are_followed_and_limited(server: Server) -> None:
    page = await guarded_get(server.url("/hop"), policy=LOOPBACK_OK)
    assert page.url == server.url("/article") and page.redirects == [server.url("/article")]
    with pytest.raises(FetchError, match="too many redirects"):
        await guarded_get(server.url("/loop"), policy=LOOPBACK_OK, limits=FetchLimits(max_redirects=3))
    assert sum(1 for path, _ in server.hits if path == "/loop") == 4


async def test_connection_is_pinned_but_host_header_keeps_the_name(server: Server) -> None:
    page = await guarded_get(server.url("/host", host="localhost"), policy=LOOPBACK_OK)
    assert page.body.decode() == f"host=localhost:{server.port}"


async def test_loopback_is_refused_by_default(server: Server) -> None:
    out = await FetchUrl()({"url": server.url("/article")}, CTX)
    assert out.is_error and out.metadata.get("refused")
    assert "loopback" in out.text
    assert server.hits == []


@pytest.mark.parametrize(
    "host",
    ["localhost", "2130706433", "0177.0.0.1", "0x7f.0.0.1", "0x7f.1", "127.1", "[::ffff:127.0.0.1]", "[::1]"],
)
async def test_numeric_notations_and_names_of_loopback_are_refused(server: Server, host: str) -> None:
    with pytest.raises(AddressRefused):
        await guarded_get(server.url("/article", host=host))
    assert server.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::ffff:169.254.169.254]/",
        "http://10.0.0.1/",
        "http://192.168.1.1/",
        "http://[fe80::1]/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
    ],
)
async def test_internal_destinations_are_refused_even_with_loopback_allowed(url: str) -> None:
    with pytest.raises(AddressRefused):
        await guarded_get(url, policy=LOOPBACK_OK)


async def test_redirect_from_allowed_server_to_refused_address_is_refused(server: Server) -> None:
    # Only 127.0.0.1 is allowed; a second server on 127.0.0.2 is reachable but must not be reached.
    other = Server({"/secret": lambda h: send(h, 200, "text/plain", b"secret")}, host="127.0.0.2")
    try:
        policy = AddressPolicy(allowed_networks=["127.0.0.1/32"])
        targets = {
            "/to-other": other.url("/secret"),
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-decimal": f"http://2130706434:{other.port}/secret",
            "/to-mapped": f"http://[::ffff:127.0.0.2]:{other.port}/secret",
        }
        for path, target in targets.items():
            server.routes[path] = redirect(target)
            with pytest.raises(AddressRefused):
                await guarded_get(server.url(path), policy=policy)
        assert other.hits == []
        assert [p for p, _ in server.hits] == list(targets)  # the allowed server was reached each time
    finally:
        other.close()


async def test_bad_urls_and_schemes_are_clear_errors() -> None:
    tool = FetchUrl()
    for url, expected in [
        ("file:///etc/passwd", "only http and https"),
        ("ftp://x.org/", "only http and https"),
    ]:
        out = await tool({"url": url}, CTX)
        assert out.is_error and expected in out.text
    out = await tool({"nope": 1}, CTX)
    assert out.is_error and "url" in out.text


async def test_malformed_hosts_and_ports_are_clear_errors_not_raw_exceptions() -> None:
    from qwq_agent.agent.messages import ToolCall
    from qwq_agent.tools.registry import ToolRegistry

    # The idna codec (a 64-character label, an empty one), httpx's IDNA checks (`xn--a`) and anyio (a
    # port of -1) raised their own exceptions out of guarded_get: through the registry the model read
    # "Tool 'fetch_url' raised UnicodeError ..." and library traceback lines. Port 0 became port 80.
    registry = ToolRegistry([FetchUrl(policy=LOOPBACK_OK)])
    for url, expected in [
        ("http://" + "a" * 64 + ".com/", "invalid host name"),
        ("http://.../", "invalid host name"),
        ("http://xn--a.com/", "invalid URL"),
        ("http://xn--/", "invalid URL"),
        ("http://127.0.0.1:-1/", "invalid port -1"),
        ("http://127.0.0.1:0/", "invalid port 0"),
        ("http://127.0.0.1:70000/", "invalid port 70000"),
    ]:
        with pytest.raises(FetchError, match=expected):
            await guarded_get(url, policy=LOOPBACK_OK)
        out = await registry.call(ToolCall(id="c", name="fetch_url", arguments={"url": url}))
        assert out.is_error and out.text.startswith(f"fetch_url failed: {expected}"), out.text
        assert "Traceback" not in out.text
    with pytest.raises(AddressRefused, match="cannot resolve host"):  # the resolver's own check
        await resolve_checked("a" * 64 + ".com", 80, LOOPBACK_OK)


def test_parse_ip_loose_reads_inet_aton_forms() -> None:
    assert str(parse_ip_loose("2130706433")) == "127.0.0.1"
    assert str(parse_ip_loose("0177.0.0.01")) == "127.0.0.1"
    assert str(parse_ip_loose("0xA9.0xFE.0xa9.0xfe")) == "169.254.169.254"
    assert str(parse_ip_loose("10.1")) == "10.0.0.1"
    assert parse_ip_loose("example.com") is None
    assert parse_ip_loose("1.2.3.4.5") is None
    assert parse_ip_loose("256.0.0.1") is None


async def test_resolve_checked_allows_public_literals_without_dns() -> None:
    assert str(await resolve_checked("8.8.8.8", 443, AddressPolicy())) == "8.8.8.8"
    assert (
        str(await resolve_checked("[2606:4700:4700::1111]", 443, AddressPolicy())) == "2606:4700:4700::1111"
    )
    with pytest.raises(AddressRefused, match="embedded"):
        await resolve_checked("2002:a9fe:a9fe::1", 80, AddressPolicy())


def test_policy_json_roundtrip() -> None:
    policy = AddressPolicy(allow_private=True, allowed_networks=["10.1.0.0/16"])
    assert AddressPolicy.model_validate(json.loads(policy.model_dump_json())) == policy


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, ssl.SSLContext]]:
    """An HTTPS server on 127.0.0.1 whose self-signed certificate names only `localhost`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = Server({"/": lambda h: send(h, 200, "text/plain", f"tls host={h.headers['Host']}".encode())})
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    srv.httpd.socket = server_ctx.wrap_socket(srv.httpd.socket, server_side=True)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    yield srv, client_ctx
    srv.close()


async def test_https_is_pinned_but_verified_against_the_name(
    tls_server: tuple[Server, ssl.SSLContext],
) -> None:
    srv, trust = tls_server
    url = f"https://localhost:{srv.port}/"
    page = await guarded_get(url, policy=LOOPBACK_OK, verify=trust)
    assert page.body.decode() == f"tls host=localhost:{srv.port}"
    # The certificate does not name 127.0.0.1, so verification really happens.
    with pytest.raises(FetchError, match="failed"):
        await guarded_get(f"https://127.0.0.1:{srv.port}/", policy=LOOPBACK_OK, verify=trust)


async def test_html_charset_is_read_from_meta_when_the_header_has_none(server: Server) -> None:
    body = '<html><head><meta charset="iso-8859-1"><title>Caf\xe9</title></head><body><p>na\xefve</p></body></html>'
    server.routes["/latin1"] = lambda h: send(h, 200, "text/html", body.encode("iso-8859-1"))
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/latin1")}, CTX)
    assert "Title: Café" in out.text and "naïve" in out.text


def test_unclosed_tags_at_the_end_of_a_page_are_read_in_linear_time() -> None:
    import time

    from qwq_agent.tools.web.readable import html_to_readable

    # CPython 3.11.7's HTMLParser rescans to the end from each `<` that no `>` follows: 64 KB of `<a "`
    # took 18 s (a 2 MB page, hours). libxml2 reads them in one pass, as a browser does: a tag or
    # comment that never closes runs to the end of the page.
    t0 = time.process_time()
    for page, text in (
        ('<a "' * 16_384, ""),
        ("<p>ok</p>" + "<b" * 32_768, "ok"),
        ("<!--" * 16_384, ""),
    ):
        assert html_to_readable(page).text == html_to_readable(page.encode()).text == text
    assert html_to_readable("<p>a &lt; b</p><p>x < y").text == "a < b\n\nx < y"
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement


def test_comments_and_sections_that_never_close_are_read_in_linear_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from html_probe import count_failed_scans

    from qwq_agent.tools.web.readable import html_to_readable

    # An unclosed `<!--` looked for `-->` (any `>` will not do), `<![CDATA[` for `]]>`: each of these
    # scanned to the end of the page and failed (140 KB: seconds; a 2 MB page: minutes, in a thread the
    # call's timeout does not stop). One NUL byte in the page switched round 1's guard off for bytes
    # (80 KB of `<a "`: 26 s). libxml2 reads each in one pass; CPython's HTMLParser is not used at all.
    failed = count_failed_scans(monkeypatch)
    t0 = time.process_time()
    for page, text in (
        ("<html><body><p>hello</p>" + "<!--<a>" * 20_000, "hello"),
        ("<p>hello</p>" + "<![CDATA[<a>]>" * 10_000, "hello\n\n" + "]>" * 10_000),  # bogus comments to `>`
        ("<p>hello</p>" + "<![if x]<b>" * 10_000, "hello"),
        (b"<p>hello</p>" + b'<a "' * 5_000 + b"\x00", "hello"),
    ):
        assert html_to_readable(page).text == text, page[:40]
    assert time.process_time() - t0 < 10  # a bound on runaway work (ms expected), not a timing measurement
    # What does close is still read as markup.
    shown = "<p>a</p><!-- hidden --><![if !IE]><p>b</p><![endif]><![CDATA[c]]><!--x--><p>d</p>"
    assert html_to_readable(shown).text == "a\n\nb\n\nd"
    assert failed == []


async def test_a_name_is_resolved_once_per_hop_and_the_connection_is_pinned(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the first answer is allowed, later answers point elsewhere; they must not be used."""
    # The internal server listens on the same port, so a re-resolved connection would reach it.
    other = Server(
        {"/article": lambda h: send(h, 200, "text/plain", b"internal")}, host="127.0.0.2", port=server.port
    )
    real_getaddrinfo = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: object, *args: object, **kwargs: object) -> object:
        if host == "rebind.test":
            lookups.append(host)
            host = "127.0.0.1" if len(lookups) == 1 else "127.0.0.2"
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    try:
        policy = AddressPolicy(allowed_networks=["127.0.0.1/32"])
        page = await guarded_get(f"http://rebind.test:{server.port}/article", policy=policy)
        assert b"The Sun" in page.body
        assert lookups == ["rebind.test"]
        assert server.hits[-1][1]["Host"] == f"rebind.test:{server.port}"
        # A second fetch resolves again, gets the internal address, and is refused before connecting.
        with pytest.raises(AddressRefused, match=r"127\.0\.0\.2"):
            await guarded_get(f"http://rebind.test:{server.port}/article", policy=policy)
        assert other.hits == []
    finally:
        other.close()


def _gzip(data: bytes, wbits: int = 31) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


async def test_compressed_bodies_are_inflated_under_the_byte_cap(server: Server) -> None:
    # httpx inflated each network chunk whole before the cap was checked: ~50 KB of gzip became 50 MB
    # in memory at once, and stacked encodings multiplied that (822 bytes -> 791 MB).
    bomb = _gzip(b"\0" * (50 * 1024 * 1024))
    server.routes["/bomb"] = lambda h: send(h, 200, "text/plain", bomb, Content_Encoding="gzip")
    tracemalloc.start()
    try:
        page = await guarded_get(
            server.url("/bomb"), policy=LOOPBACK_OK, limits=FetchLimits(max_bytes=100_000)
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert page.truncated and page.body == b"\0" * 100_000
    assert peak < 10 * 1024 * 1024
    assert server.hits[-1][1]["Accept-Encoding"] == "gzip, deflate"  # only what is decoded here


async def test_gzip_and_both_deflate_forms_are_decoded(server: Server) -> None:
    text = "héllo wörld " * 1000
    for path, body, coding in (
        ("/gz", _gzip(text.encode()), "gzip"),
        ("/gz2", _gzip(text.encode()[:5000]) + _gzip(text.encode()[5000:]), "x-gzip"),  # two members
        ("/zl", _gzip(text.encode(), 15), "deflate"),
        ("/raw", _gzip(text.encode(), -15), "deflate"),
    ):
        server.routes[path] = lambda h, b=body, c=coding: send(
            h, 200, "text/plain; charset=utf-8", b, Content_Encoding=c
        )
        page = await guarded_get(server.url(path), policy=LOOPBACK_OK)
        assert page.body.decode() == text and not page.truncated, path


async def test_stacked_unknown_and_corrupt_encodings_are_clear_errors(server: Server) -> None:
    twice = _gzip(_gzip(b"\0" * (8 * 1024 * 1024)))
    server.routes["/twice"] = lambda h: send(h, 200, "text/plain", twice, Content_Encoding="gzip, gzip")
    server.routes["/br"] = lambda h: send(h, 200, "text/plain", b"\x0b\x02\x80hi\x03", Content_Encoding="br")
    server.routes["/bad"] = lambda h: send(h, 200, "text/plain", b"\x1f\x8bnot gzip", Content_Encoding="gzip")
    tool = FetchUrl(policy=LOOPBACK_OK)
    for path, expected in (
        ("/twice", "stacked"),
        ("/br", "unsupported content encoding 'br'"),
        ("/bad", "corrupt"),
    ):
        out = await tool({"url": server.url(path)}, CTX)
        assert out.is_error and expected in out.text, out.text


def test_nested_articles_and_deep_tags_are_read_in_linear_time() -> None:
    import time

    from qwq_agent.tools.web.readable import html_to_readable

    # Measuring every nested <article> read the page once per article (110 KB: a minute), and the
    # recursive walk hit RecursionError past ~1,000 nested tags.
    t0 = time.process_time()
    articles = html_to_readable("<html><body>" + "<article>x " * 10_000 + "</body></html>")
    assert articles.text.split() == ["x"] * 10_000
    spans = html_to_readable("<p>top</p>" + "<span>" * 5_000 + "deep" + "</span>" * 5_000)
    assert spans.text == "top\n\ndeep"
    lists = html_to_readable("<ul><li>a<table><tr><td>1</td><td>2</td></tr></table></li><li>b</li></ul>")
    assert lists.text == "- a\n\n1 | 2\n\n- b"  # as the recursive walk wrote it
    assert (
        time.process_time() - t0 < 30
    )  # a bound on runaway work (seconds expected), not a timing measurement


def test_pages_that_leave_out_optional_end_tags_are_read_in_linear_time() -> None:
    import time

    from qwq_agent.html_parse import MAX_DEPTH, parse_html
    from qwq_agent.tools.web.readable import html_to_readable

    # html.parser closes nothing by itself: every `<li>` (or `<p>`) whose end tag is left out held
    # all the items after it, and BeautifulSoup climbed that whole chain of ancestors for each string
    # it added: 256 KB of an ordinary list took seconds, a 2 MB page minutes. libxml2 closes them as
    # a browser does, and nesting made on purpose is capped at MAX_DEPTH (its text kept).
    def depth(soup: object) -> int:
        return max(len(list(tag.parents)) for tag in soup.find_all(True))  # type: ignore[attr-defined]

    items = 40_000  # ~1 MB
    t0 = time.process_time()
    page = (
        "<html><body><ul>"
        + "".join(f"<li>Item <b>{i}</b> text" for i in range(items))
        + "</ul></body></html>"
    )
    assert depth(parse_html(page)) < 8
    text = html_to_readable(page).text
    assert text.split("\n")[:2] == ["- Item 0 text", "- Item 1 text"] and text.count("\n") == items - 1
    paragraphs = html_to_readable("<body>" + "<p>para <i>x</i> y" * 20_000).text
    assert paragraphs.split("\n\n") == ["para x y"] * 20_000
    nested = "<body>" + "<div><b>1</b>x" * 20_000
    assert depth(parse_html(nested)) <= MAX_DEPTH + 1
    assert html_to_readable(nested).text.replace("\n", "") == "1x" * 20_000
    assert time.process_time() - t0 < 30  # a bound on runaway work (seconds expected), not a measurement


def test_a_stray_ampersand_hash_and_a_cut_page_are_read_as_text() -> None:
    from qwq_agent.tools.web.readable import html_to_readable

    # At a `&#` that is no numeric reference, CPython's HTMLParser dumped the rest of the page as raw
    # text at close(): markup (`</p></body></html>`) and round 1's end marker `<!--'"'"-->` showed up
    # in what the model read.
    page = (
        "<html><head><title>Entities</title></head><body><h1>Entities</h1>"
        "<p>A numeric reference starts with &# and ends with a semicolon.</p><p>Next.</p></body></html>"
    )
    assert html_to_readable(page).text == (
        "# Entities\n\nA numeric reference starts with &# and ends with a semicolon.\n\nNext."
    )
    assert html_to_readable("<html><body><p>Prices in &#x").text == "Prices in &#x"  # cut by the size cap
    assert html_to_readable("<p>a &#65; &#x42; &amp; &#; &#xZ</p>").text == "a A B & &#; &#xZ"


async def test_parsing_a_page_leaves_the_event_loop_free_so_the_time_limit_fires(server: Server) -> None:
    import time

    from qwq_agent.agent.messages import ToolCall
    from qwq_agent.tools.registry import ToolRegistry

    # Seconds of parsing (a large page) used to run on the event loop: no deadline could fire.
    page = b"<html><body>" + b"<p>word <b>bold</b> <a href=/x>l</a></p>" * 10_000 + b"</body></html>"
    server.routes["/large"] = lambda h: send(h, 200, "text/html; charset=utf-8", page)
    registry = ToolRegistry([FetchUrl(policy=LOOPBACK_OK)], timeout=0.2)
    t0 = time.monotonic()
    out = await registry.call(ToolCall(id="c", name="fetch_url", arguments={"url": server.url("/large")}))
    assert out.metadata.get("error") == "timeout", out.text[:200]
    assert time.monotonic() - t0 < 2


async def test_pages_a_browser_shows_are_shown_not_raised(server: Server) -> None:
    pages = {
        "/bogus": ("text/html; charset=bogus", b"<html><body><p>caf\xc3\xa9 text</p></body></html>"),
        "/marked": ("text/html; charset=utf-8", b"<p>before &amp; <![x> after</p><script>x=1</script>"),
        "/deepjson": ("application/json", b'{"key": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        "/plainbogus": ("text/plain; charset=bogus", "naïve".encode()),
    }
    for path, (ctype, body) in pages.items():
        server.routes[path] = lambda h, c=ctype, b=body: send(h, 200, c, b)
    tool = FetchUrl(policy=LOOPBACK_OK)
    bogus = await tool({"url": server.url("/bogus")}, CTX)
    assert not bogus.is_error and "café text" in bogus.text
    marked = await tool({"url": server.url("/marked")}, CTX)  # html.parser raised on `<![x>`
    assert not marked.is_error and "before & after" in marked.text and "x=1" not in marked.text
    deep = await tool({"url": server.url("/deepjson")}, CTX)
    assert not deep.is_error and '{"key": [[[' in deep.text
    plain = await tool({"url": server.url("/plainbogus")}, CTX)
    assert not plain.is_error and "naïve" in plain.text


@pytest.mark.parametrize(
    ("charset", "body"), [("utf-7", b"Welcome +2D0- in"), ("unicode_escape", b"Welcome \\ud83d in")]
)
async def test_a_charset_that_decodes_to_lone_surrogates_is_read_as_utf_8(
    server: Server, charset: str, body: bytes
) -> None:
    # utf-7 and the escape codecs turn these bytes into half a surrogate pair, which nothing can encode:
    # the next request to the model and the trace would fail on it.
    server.routes["/odd"] = lambda h: send(h, 200, f"text/plain; charset={charset}", body)
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/odd")}, CTX)
    assert not out.is_error, out.text
    assert body.decode() in out.text
    out.text.encode("utf-8")  # raises on a lone surrogate


async def test_elements_past_the_depth_cap_stay_elements_scripts_dropped_headings_kept(
    server: Server,
) -> None:
    from qwq_agent.html_parse import MAX_DEPTH, parse_html

    # Past MAX_DEPTH open elements every start tag was dropped: a few hundred unclosed `<font>`s (old
    # or broken pages; libxml2 keeps them open) turned a later <script>'s code and <style>'s rules into
    # page text, and its <h2> into plain words. They are siblings at the cap depth now, as in a browser.
    fonts = "\n".join(f"<font size=2>line {i}<br>" for i in range(MAX_DEPTH + 44))
    page = (
        f"<html><head><title>t</title></head><body>{fonts}\n"
        "<script>var apiKey='JS_CODE_NOT_TEXT';</script><style>.x{color:red}</style>\n"
        "<h2>Install</h2>\n<p>run make</p><p>then <b>test</b> it</p></body></html>"
    )
    soup = parse_html(page)
    assert soup.find("script") is not None and soup.find("h2") is not None
    assert max(len(list(tag.parents)) for tag in soup.find_all(True)) <= MAX_DEPTH + 1
    server.routes["/deep.html"] = lambda h: send(h, 200, "text/html; charset=utf-8", page.encode())
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/deep.html")}, CTX)
    assert not out.is_error, out.text
    assert "JS_CODE_NOT_TEXT" not in out.text and "color:red" not in out.text, out.text[-300:]
    # At the cap an inline element closes the block it is in (<b> leaves the <p>): its text stays, in order.
    assert out.text.endswith("## Install\n\nrun make\n\nthen\n\ntest it"), out.text[-300:]
    shown = [int(line[5:]) for line in out.text.split("\n") if line.startswith("line ")]
    assert shown == list(range(MAX_DEPTH + 44))  # the text before, all of it, in order


# A page that names a codec no page is in, spelt in any of the ways Python's lookup (or bs4's) accepts.
@pytest.mark.parametrize(
    "charset", ["punycode", "PunyCode", "puny-code", "utf-7", "UTF7", "u7", "utf--7", "unicode_escape"]
)
async def test_a_meta_charset_no_page_is_in_is_not_used_to_decode_the_page(
    server: Server, charset: str
) -> None:
    # known_charset refused these in the Content-Type header only; bs4 honoured a <meta charset> naming
    # one: punycode is quadratic (a 300 KB page took 29 s, in a thread that outlives the tool's
    # timeout), utf-7 and the escape codecs make lone surrogates. The page is read as one naming none.
    text = "Welcome +2D0- \\ud83d in -" + "a" * 2000
    # No end tags: the page then ends with letters after its last `-`, which punycode decodes.
    body = f'<html><head><meta charset="{charset}"><title>t</title></head><body><p>{text}'
    server.routes["/meta"] = lambda h: send(h, 200, "text/html", body.encode())
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/meta")}, CTX)
    assert not out.is_error and text in out.text, out.text[:300]


@pytest.mark.parametrize(("charset", "declared"), [("shift_jis", "x-sjis"), ("cp1251", "windows-1251")])
async def test_a_meta_charset_under_another_name_still_decodes_the_page(
    server: Server, charset: str, declared: str
) -> None:
    text = "東京 キャッシュ" if charset == "shift_jis" else "Привет мир"
    body = f'<html><head><meta charset="{declared}"></head><body><p>{text}</p></body></html>'
    server.routes["/named"] = lambda h: send(h, 200, "text/html", body.encode(charset))
    out = await FetchUrl(policy=LOOPBACK_OK)({"url": server.url("/named")}, CTX)
    assert text in out.text, out.text
