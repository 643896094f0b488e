"""How our HTTP clients reach a server the user named: proxies and CA certificates, from `Settings`.

httpx and requests, left to themselves (`trust_env`), read HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
NO_PROXY, SSL_CERT_FILE and SSL_CERT_DIR from the environment: variables `qwq-agent --help` did not
list, with failures nobody could place (a dead proxy made a live model server on 127.0.0.1 "no model
server answers"; `ALL_PROXY=socks5://...` an ImportError reported as our bug). Every client to a model
server, router, SGLang worker, MCP server or OTLP collector is built with `trust_env=False` and the
options made here, by one rule:

- proxies are honoured (a remote model server may be reachable only through one): `https_proxy` /
  `http_proxy` by the URL's scheme, else `all_proxy` (each lower case first, then upper case);
- loopback (`localhost`, `localhost.`, all of 127.0.0.0/8, `::1` however written) is never proxied,
  nor a host `NO_PROXY` names: `example.com` covers its subdomains, `.example.com` (or `*.example.com`)
  only them, an address (`10.0.0.7`, `fd00::5`, `[fd00::5]`) itself, a network (`10.0.0.0/8`) its
  addresses, `host:port` that port only, `*` every host. One matcher (`_is_direct`) decides for every
  client: httpx's mount patterns cannot say "a network", so the httpx clients route each request
  through `_Router`, which asks it;
- a proxy URL that cannot be used (another scheme, SOCKS without its package), or a CA file or folder
  that cannot be read, is a `SettingsError` naming the variable, raised when a client is built. The
  CA variables are read only for a client that will speak TLS (an https:// server, or an https://
  proxy): a plain http:// model server on 127.0.0.1 runs whatever they say.

`fetch_url` and `web_search` use no proxy: they connect to the address they resolved and checked.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx

from qwq_agent.settings import Settings, SettingsError, get_settings
from qwq_agent.tools.netguard import parse_ip_loose
from qwq_agent.urls import redact_url

__all__ = ["Proxy", "client_options", "proxy_for", "requests_options"]

_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_DEFAULT_PORTS = {"http": 80, "https": 443}
_BRACKETED = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")


@dataclass(frozen=True)
class Proxy:
    """A proxy from the environment: the variable that set it, and its URL."""

    variable: str
    url: str

    def __str__(self) -> str:
        return f"{self.variable}={redact_url(self.url)}"


def _ip(host: str) -> _IPAddress | None:
    """`host` (brackets or not) as an address, read as the resolver reads it (`127.1`, `0x7f.1`:
    `parse_ip_loose`), IPv4-mapped IPv6 as its IPv4; None for a name."""
    address = parse_ip_loose(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_loopback(host: str) -> bool:
    if host.rstrip(".") == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


@dataclass(frozen=True)
class _Direct:
    """A `NO_PROXY` entry: `network` for an address or network, else `domain` (with its subdomains
    unless `subdomains_only`); `scheme` and `port` None for any."""

    scheme: str | None = None
    port: int | None = None
    network: _IPNetwork | None = None
    domain: str = ""
    subdomains_only: bool = False

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether a request to `scheme://host:port` (`host` lower case, without brackets) is meant."""
        if (self.scheme and self.scheme != scheme) or (self.port is not None and self.port != port):
            return False
        if self.network is not None:
            address = _ip(host)
            return address is not None and address in self.network
        name = host.rstrip(".")
        return name.endswith("." + self.domain) or (not self.subdomains_only and name == self.domain)


def _network(text: str) -> _IPNetwork | None:
    try:
        return ipaddress.ip_network(text, strict=False)  # `10.0.0.7`, `fd00::5`, `10.0.0.0/8`
    except ValueError:
        address = _ip(text)
        return ipaddress.ip_network(address) if address is not None else None


def _entry(entry: str) -> _Direct | None:
    """One `NO_PROXY` entry (lower case, not `*`), or None when it names no host."""
    scheme = None
    if "://" in entry:
        scheme, _, entry = entry.partition("://")
        entry = entry.rstrip("/")
    if (network := _network(entry)) is not None:
        return _Direct(scheme, None, network)
    if bracketed := _BRACKETED.fullmatch(entry):  # `[fd00::5]`, `[fd00::5]:8080`
        network = _network(bracketed[1])
        port = int(bracketed[2]) if bracketed[2] else None
        return _Direct(scheme, port, network) if network is not None else None
    host, colon, port_text = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
    if colon and not port_text.isdigit():
        return None  # a port that is no number: no host a request names
    port = int(port_text) if colon else None
    if (network := _network(host)) is not None:
        return _Direct(scheme, port, network)
    domain = host.rstrip(".")
    subdomains_only = domain.startswith((".", "*."))
    domain = domain.lstrip("*").lstrip(".")
    return _Direct(scheme, port, None, domain, subdomains_only) if domain else None


def _direct_hosts(settings: Settings) -> list[_Direct] | None:
    """The `NO_PROXY` entries; None when one is `*` (no host is proxied)."""
    hosts = []
    for raw in (settings.no_proxy or "").split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return None
        if entry and (direct := _entry(entry)) is not None:
            hosts.append(direct)
    return hosts


def _is_direct(url: str, direct: list[_Direct] | None) -> bool:
    """Whether `url` is reached without a proxy: loopback, a `NO_PROXY` host (`direct`, as
    `_direct_hosts` parsed it) or not a URL at all."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return True
    return _host_is_direct(scheme, host, port, direct)


def _host_is_direct(scheme: str, host: str, port: int | None, direct: list[_Direct] | None) -> bool:
    if _is_loopback(host):
        return True
    port = port if port is not None else _DEFAULT_PORTS.get(scheme)
    return direct is None or any(d.matches(scheme, host, port) for d in direct)


# The module each client library speaks SOCKS through, and its package.
_SOCKS_PACKAGES = {"socksio": "socksio", "socks": "PySocks"}


def _check(proxy: Proxy, socks_module: str) -> Proxy:
    scheme = _scheme(proxy.url)
    if scheme in ("http", "https"):
        return proxy
    if scheme in ("socks5", "socks5h"):
        if importlib.util.find_spec(socks_module) is None:
            package = _SOCKS_PACKAGES[socks_module]
            raise SettingsError(
                f"bad environment variable: {proxy}: a SOCKS proxy needs the {package} package, "
                "which is not installed",
                fix=f"pip install {package} (in qwq-agent's environment), or unset {proxy.variable}",
            )
        return proxy
    raise SettingsError(
        f"bad environment variable: {proxy}: not an http://, https:// or socks5:// proxy URL",
        fix=f"set {proxy.variable} to a proxy's URL (e.g. http://proxy.example:3128), or unset it",
    )


def _proxies(settings: Settings, socks_module: str = "socksio") -> dict[str, Proxy]:
    """The proxy of each scheme, checked, named by the variable that set it."""
    fallback = None
    if settings.all_proxy:
        fallback = Proxy(settings.variable("all_proxy"), settings.all_proxy)
    found: dict[str, Proxy] = {}
    for scheme, field in (("http", "http_proxy"), ("https", "https_proxy")):
        value = getattr(settings, field)
        proxy = Proxy(settings.variable(field), value) if value else fallback
        if proxy is not None:
            found[scheme] = _check(proxy, socks_module)
    return found


def _scheme(url: str) -> str:
    """`url`'s scheme, lower case; read without `urlsplit`, which raises on a bad `[` host (httpx says
    that, when the request is made)."""
    scheme, sep, _ = url.partition("://")
    return scheme.strip().lower() if sep else ""


def _proxy_for(url: str, settings: Settings, direct: list[_Direct] | None, socks_module: str) -> Proxy | None:
    # The proxies are read (and checked) only for a URL that is not direct: a bad proxy variable
    # does not stop a client that would never use it.
    if _is_direct(url, direct):
        return None
    return _proxies(settings, socks_module).get(_scheme(url))


def proxy_for(url: str, settings: Settings | None = None) -> Proxy | None:
    """The proxy a request to `url` goes through, or None (loopback, `NO_PROXY`, none set)."""
    settings = settings or get_settings()
    return _proxy_for(url, settings, _direct_hosts(settings), "socksio")


def _ca_error(variable: str, path: str, why: str, *, folder: bool) -> SettingsError:
    what = "a folder of PEM CA certificates" if folder else "a PEM file of CA certificates"
    return SettingsError(
        f"bad environment variable: {variable}={path}: {why}", fix=f"point {variable} at {what}, or unset it"
    )


def _context(cafile: tuple[str, str] | None, capath: tuple[str, str] | None) -> ssl.SSLContext:
    """A context verifying with the CA file and/or folder, each given as (variable, path); one that
    cannot be used is a `SettingsError` naming its variable and path."""
    if cafile and not os.path.isfile(cafile[1]):
        why = "not a file" if os.path.exists(cafile[1]) else "no such file"
        raise _ca_error(*cafile, why, folder=False)
    if capath and not os.path.isdir(capath[1]):
        why = "not a folder" if os.path.exists(capath[1]) else "no such folder"
        raise _ca_error(*capath, why, folder=True)
    try:
        return ssl.create_default_context(
            cafile=cafile[1] if cafile else None, capath=capath[1] if capath else None
        )
    except (ssl.SSLError, OSError) as exc:
        # Mostly the file (a folder's certificates are looked up at each handshake, not here).
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        variable, path = cafile or capath or ("", "")
        raise _ca_error(
            variable, path, f"cannot be read as CA certificates ({why})", folder=not cafile
        ) from None


def _ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    """The context that verifies servers with SSL_CERT_FILE / SSL_CERT_DIR; True (the default CAs)
    when neither is set."""
    cafile, capath = settings.ssl_cert_file, settings.ssl_cert_dir
    if not cafile and not capath:
        return True
    return _context(
        ("SSL_CERT_FILE", cafile) if cafile else None, ("SSL_CERT_DIR", capath) if capath else None
    )


def _speaks_tls(url: str, proxy: Proxy | None) -> bool:
    """Whether a request to `url`, through `proxy` (None: direct), speaks TLS: to an https:// server
    or through an https:// proxy."""
    return _scheme(url) != "http" or (proxy is not None and _scheme(proxy.url) == "https")


def _tls_needed(urls: tuple[str, ...], direct: list[_Direct] | None, proxies: dict[str, Proxy]) -> bool:
    """Whether a client for `urls` (any server, when none given) speaks TLS; `direct` and `proxies`
    as `_direct_hosts` and `_proxies` made them."""
    if not urls:
        return True
    return any(
        _speaks_tls(url, None if _is_direct(url, direct) else proxies.get(_scheme(url))) for url in urls
    )


class _Router:
    """The transport of a client with proxies: each request goes to `direct` or to its scheme's proxy
    transport, as `_host_is_direct` says of `direct_hosts` (the `NO_PROXY` entries, parsed once when
    the client is built). Duck-typed as an `AsyncBaseTransport`, so that it serves
    httpx and the MCP SDK's copy of it (httpx2) alike."""

    def __init__(self, direct: Any, proxied: dict[str, Any], direct_hosts: list[_Direct]) -> None:
        self._direct = direct
        self._proxied = proxied
        self._direct_hosts = direct_hosts

    def _for(self, url: Any) -> Any:
        scheme, host = url.scheme.lower(), url.host.lower()
        if scheme not in self._proxied or _host_is_direct(scheme, host, url.port, self._direct_hosts):
            return self._direct
        return self._proxied[scheme]

    async def handle_async_request(self, request: Any) -> Any:
        return await self._for(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        for transport in (self._direct, *self._proxied.values()):
            await transport.aclose()

    async def __aenter__(self) -> _Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def client_options(
    *urls: str, http: ModuleType = httpx, limits: httpx.Limits | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Keyword arguments for an `httpx.AsyncClient` (or, with `http=httpx2`, the MCP SDK's client).

    `urls`: the servers the client is for (none: any); the CA variables are read only when one of them
    is reached over TLS. `limits`: the client's own, given again for the transports made here (a
    transport has its own pool, which the client's `limits` do not reach).
    """
    settings = settings or get_settings()
    proxies = _proxies(settings)
    direct_hosts = _direct_hosts(settings)
    verify = _ssl_context(settings) if _tls_needed(urls, direct_hosts, proxies) else True
    options: dict[str, Any] = {"trust_env": False, "verify": verify}
    if not proxies or direct_hosts is None:
        return options
    pool = {"limits": limits} if limits is not None else {}
    proxied = {
        scheme: http.AsyncHTTPTransport(proxy=proxy.url, verify=verify, trust_env=False, **pool)
        for scheme, proxy in proxies.items()
    }
    direct = http.AsyncHTTPTransport(verify=verify, trust_env=False, **pool)
    options["transport"] = _Router(direct, proxied, direct_hosts)
    return options


def requests_options(url: str, settings: Settings | None = None) -> dict[str, Any]:
    """For a `requests.Session` (with `trust_env = False`) posting to `url`, the OTLP exporter's:
    `proxies` and `verify` to set on it, and `proxy` (the `Proxy`, or None) to name in messages.

    `verify` is SSL_CERT_FILE, else SSL_CERT_DIR, else REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE (what
    requests read itself before), each checked as `client_options` checks them when TLS is spoken."""
    settings = settings or get_settings()
    proxy = _proxy_for(
        url, settings, _direct_hosts(settings), "socks"
    )  # requests speaks SOCKS through PySocks
    verify: str | bool = True
    if _speaks_tls(url, proxy):
        if settings.ssl_cert_file or settings.ssl_cert_dir:
            _ssl_context(settings)
            verify = settings.ssl_cert_file or settings.ssl_cert_dir or True
        elif bundle := settings.requests_ca_bundle:  # a file or, as requests takes it, a folder
            where = (settings.variable("requests_ca_bundle"), bundle)
            if os.path.isdir(bundle):
                _context(None, where)
            else:
                _context(where, None)
            verify = bundle
    proxies = {_scheme(url): proxy.url} if proxy is not None else {}
    return {"proxies": proxies, "verify": verify, "proxy": proxy}
