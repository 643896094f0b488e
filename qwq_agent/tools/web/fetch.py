"""Guarded HTTP GET: every hop's address is checked, pinned, size-capped and time-limited.

Redirects are followed here rather than by httpx so each `Location` goes through the address policy.
The connection goes to the address that was checked (the URL's host is replaced by it) while the
`Host` header and TLS SNI keep the name, so certificates are still verified against the name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, Field

from qwq_agent.charsets import known_charset
from qwq_agent.tools.netguard import AddressPolicy, AddressRefused, check_host_literal, resolve_all_checked
from qwq_agent.tools.web.inflate import ACCEPT_ENCODING, BodyEncodingError, read_capped

_REDIRECTS = {301, 302, 303, 307, 308}


class FetchError(Exception):
    """A fetch failed in a way worth telling the model (the message is safe to show)."""


class FetchLimits(BaseModel):
    """Bounds on one fetch, redirects included."""

    max_bytes: int = Field(default=2_000_000, gt=0)
    timeout_s: float = Field(default=20.0, gt=0)
    max_redirects: int = Field(default=5, ge=0)
    user_agent: str = "qwq-agent/0.1 (+https://github.com/qwq-agent)"


class FetchedPage(BaseModel):
    """The body and metadata of the final response of a fetch."""

    url: str
    status: int
    content_type: str
    charset: str | None = None
    body: bytes
    truncated: bool = False
    redirects: list[str] = Field(default_factory=list)
    elapsed_s: float = 0.0


async def guarded_get(
    url: str,
    *,
    policy: AddressPolicy | None = None,
    limits: FetchLimits | None = None,
    accept: str = "text/html,application/xhtml+xml,text/plain,application/json;q=0.9,*/*;q=0.1",
    verify: ssl.SSLContext | bool = True,
) -> FetchedPage:
    """GET `url` under `policy` and `limits`; raises `AddressRefused` or `FetchError`.

    `verify` is httpx's TLS verification setting (an `ssl.SSLContext` to trust a private CA).
    """
    policy = policy or AddressPolicy()
    limits = limits or FetchLimits()
    started = time.monotonic()
    try:
        async with asyncio.timeout(limits.timeout_s):
            page = await _follow(url, policy, limits, accept, verify)
    except TimeoutError:
        raise FetchError(f"timed out after {limits.timeout_s:g} s fetching {url}") from None
    page.elapsed_s = time.monotonic() - started
    return page


async def _follow(
    url: str, policy: AddressPolicy, limits: FetchLimits, accept: str, verify: ssl.SSLContext | bool
) -> FetchedPage:
    timeout = httpx.Timeout(limits.timeout_s)
    # trust_env=False: an HTTP proxy from the environment would do the resolving and connecting,
    # bypassing the pinned, checked address.
    async with httpx.AsyncClient(
        timeout=timeout, trust_env=False, follow_redirects=False, verify=verify
    ) as client:
        current = _parse(url, policy)
        hops: list[str] = []
        while True:
            response = await _send(client, current, policy, limits, accept)
            try:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    if len(hops) >= limits.max_redirects:
                        raise FetchError(f"too many redirects (more than {limits.max_redirects}) from {url}")
                    target = urljoin(str(current), response.headers["location"])
                    hops.append(target)
                    current = _parse(target, policy)
                    continue
                body, truncated = await _read_capped(response, limits.max_bytes)
                content_type = response.headers.get("content-type", "")
                return FetchedPage(
                    url=str(current),
                    status=response.status_code,
                    content_type=content_type.split(";", 1)[0].strip().lower(),
                    charset=response.charset_encoding,
                    body=body,
                    truncated=truncated,
                    redirects=hops,
                )
            finally:
                await response.aclose()


def _parse(url: str, policy: AddressPolicy) -> httpx.URL:
    # Check the host as written before httpx normalises or rejects it, so a numeric trick that
    # httpx happens to reject still reads as the refusal it is.
    try:
        host = urlsplit(url).hostname
    except ValueError:
        host = None
    if host:
        check_host_literal(host, policy)
    try:
        parsed = httpx.URL(url)
        host = parsed.host  # decoded on access: idna's IDNAError, a ValueError, for `xn--a`
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"invalid URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise FetchError(
            f"only http and https URLs can be fetched, not {parsed.scheme or 'a relative URL'!r}"
        )
    if not host:
        raise FetchError(f"URL {url!r} has no host")
    # httpx takes any integer (-1 reached the socket as an OverflowError; 0 read as "no port": 80).
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise FetchError(f"invalid port {parsed.port} in {url!r}")
    try:
        # As the resolver will encode it: a label over 63 characters, or an empty one (`...`).
        host.encode("idna")
    except UnicodeError as exc:
        raise FetchError(f"invalid host name {host!r}: {exc}") from None
    return parsed


async def _send(
    client: httpx.AsyncClient, url: httpx.URL, policy: AddressPolicy, limits: FetchLimits, accept: str
) -> httpx.Response:
    port = url.port if url.port is not None else (443 if url.scheme == "https" else 80)
    addresses = await resolve_all_checked(url.host, port, policy)
    host_header = url.netloc.decode("ascii").rsplit("@", 1)[-1]
    headers = {
        "Host": host_header,
        "User-Agent": limits.user_agent,
        "Accept": accept,
        "Accept-Encoding": ACCEPT_ENCODING,  # the body is decoded under the cap, never by httpx
    }
    extensions = {}
    if url.scheme == "https" and not _is_ip(url.host):
        extensions["sni_hostname"] = url.host
    for i, address in enumerate(addresses):
        # Connect to the checked address itself; httpx never sees the name, so never resolves it.
        request = client.build_request(
            "GET", url.copy_with(host=str(address)), headers=headers, extensions=extensions
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            if i + 1 < len(addresses):
                continue  # e.g. ::1 first but the server listens on 127.0.0.1 only
            raise FetchError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
        except httpx.TimeoutException:
            raise FetchError(f"timed out connecting to or reading from {url}") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
        except Exception as exc:  # what the transport lets out unwrapped (anyio's ExceptionGroup, ...)
            while isinstance(exc, ExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]  # the group's own message says nothing of what went wrong
            raise FetchError(f"request to {url} failed: {type(exc).__name__}: {exc}") from None
    raise FetchError(f"no address to connect to for {url}")  # unreachable: resolving gives at least one


async def _read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """The body decoded, at most `max_bytes` of it, and whether it was cut (`inflate.read_capped`)."""
    url = response.request.url
    try:
        return await read_capped(response, max_bytes)
    except BodyEncodingError as exc:
        raise FetchError(f"{url} sent {exc}") from None
    except httpx.HTTPError as exc:
        raise FetchError(f"reading the body of {url} failed: {exc}") from None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = ["AddressRefused", "FetchError", "FetchLimits", "FetchedPage", "guarded_get", "known_charset"]
