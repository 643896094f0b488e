"""How our HTTP clients reach a server the user named: proxies and CA certificates, from `Settings`.

httpx and requests, left to themselves (`trust_env`), read HTTP_PROXY, HTTPS_PROXY, ALL_PROXY,
NO_PROXY, SSL_CERT_FILE and SSL_CERT_DIR from the environment: variables `qwq-agent --help` did not
list, with failures nobody could place (a dead proxy made a live model server on 127.0.0.1 "no model
server answers"; `ALL_PROXY=socks5://...` an ImportError reported as our bug). Every client to a model
server, router, SGLang worker, MCP server or OTLP collector is built with `trust_env=False` and the
options made here, by one rule:

- proxies are honoured (a remote model server may be reachable only through one): `HTTPS_PROXY` /
  `HTTP_PROXY` by the URL's scheme, else `ALL_PROXY`;
- loopback (`localhost`, `127.0.0.1`, `::1`) is never proxied, nor a host `NO_PROXY` names (as httpx
  reads it: `example.com` covers its subdomains, `.example.com` only them, `*` every host);
- a proxy URL that cannot be used (another scheme, SOCKS without its package) is a `SettingsError`
  naming the variable, raised when a client is built.

`fetch_url` and `web_search` use no proxy: they connect to the address they resolved and checked.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import ssl
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx

from qwq_agent.settings import Settings, SettingsError, get_settings
from qwq_agent.urls import redact_url

__all__ = ["Proxy", "client_options", "proxy_for", "requests_options"]

LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class Proxy:
    """A proxy from the environment: the variable that set it, and its URL."""

    variable: str
    url: str

    def __str__(self) -> str:
        return f"{self.variable}={redact_url(self.url)}"


@dataclass(frozen=True)
class _Direct:
    """A host reached without a proxy: `scheme` None for any, `host` with httpx's `*` prefix forms."""

    scheme: str | None
    host: str
    port: int | None

    def pattern(self) -> str:
        """The httpx mount pattern (`all://*example.com`, `http://[::1]:8080`)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.scheme or 'all'}://{host}{port}"

    def matches(self, scheme: str, host: str, port: int | None) -> bool:
        """As httpx's URLPattern matches: `*.d` subdomains of d only, `*d` d and its subdomains."""
        if (self.scheme and self.scheme != scheme) or (self.port is not None and self.port != port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        if self.host.startswith("*"):
            return host == self.host[1:] or host.endswith("." + self.host[1:])
        return host == self.host


def _direct_hosts(settings: Settings) -> list[_Direct] | None:
    """Loopback and the `NO_PROXY` entries; None when `NO_PROXY` is `*` (no host is proxied)."""
    hosts = [_Direct(None, host, None) for host in LOOPBACK]
    for entry in (settings.no_proxy or "").split(","):
        entry = entry.strip().lower()
        if entry == "*":
            return None
        if not entry:
            continue
        try:
            parts = urlsplit(entry if "://" in entry else f"//{entry}")
            host, port = parts.hostname or "", parts.port
        except ValueError:  # a port that is no number: no host httpx would match either
            continue
        if not host:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            host = host if host == "localhost" else f"*{host}"  # a domain: its subdomains too
        hosts.append(_Direct(parts.scheme or None, host, port))
    return hosts


# The module each client library speaks SOCKS through, and its package.
_SOCKS_PACKAGES = {"socksio": "socksio", "socks": "PySocks"}


def _check(proxy: Proxy, socks_module: str) -> Proxy:
    scheme = urlsplit(proxy.url).scheme.lower()
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
    """The proxy of each scheme, checked."""
    fallback = Proxy("ALL_PROXY", settings.all_proxy) if settings.all_proxy else None
    found: dict[str, Proxy] = {}
    for scheme, value, variable in (
        ("http", settings.http_proxy, "HTTP_PROXY"),
        ("https", settings.https_proxy, "HTTPS_PROXY"),
    ):
        proxy = Proxy(variable, value) if value else fallback
        if proxy is not None:
            found[scheme] = _check(proxy, socks_module)
    return found


def _is_direct(url: str, settings: Settings) -> bool:
    """Whether `url` is reached without a proxy: loopback, a `NO_PROXY` host (or not a URL at all)."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), (parts.hostname or "").lower(), parts.port
    except ValueError:
        return True
    direct = _direct_hosts(settings)
    return direct is None or any(d.matches(scheme, host, port) for d in direct)


def proxy_for(url: str, settings: Settings | None = None) -> Proxy | None:
    """The proxy a request to `url` goes through, or None (loopback, `NO_PROXY`, none set)."""
    settings = settings or get_settings()
    if _is_direct(url, settings):
        return None
    return _proxies(settings).get(urlsplit(url).scheme.lower())


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    if settings.ssl_cert_file or settings.ssl_cert_dir:
        return ssl.create_default_context(cafile=settings.ssl_cert_file, capath=settings.ssl_cert_dir)
    return True


def client_options(
    *, http: ModuleType = httpx, limits: httpx.Limits | None = None, settings: Settings | None = None
) -> dict[str, Any]:
    """Keyword arguments for an `httpx.AsyncClient` (or, with `http=httpx2`, the MCP SDK's client).

    `limits`: the client's own, given again for the proxy transports (a mounted transport has its own
    pool, which the client's `limits` do not reach).
    """
    settings = settings or get_settings()
    verify = _verify(settings)
    options: dict[str, Any] = {"trust_env": False, "verify": verify}
    proxies = _proxies(settings)
    direct = _direct_hosts(settings)
    if not proxies or direct is None:
        return options
    pool = {"limits": limits} if limits is not None else {}
    mounts: dict[str, Any] = {
        f"{scheme}://": http.AsyncHTTPTransport(proxy=proxy.url, verify=verify, trust_env=False, **pool)
        for scheme, proxy in proxies.items()
    }
    # A host pattern outranks a scheme's in httpx: these hosts get the client's own transport.
    mounts.update({d.pattern(): None for d in direct})
    options["mounts"] = mounts
    return options


def requests_options(url: str, settings: Settings | None = None) -> dict[str, Any]:
    """`proxies` and `verify` for a `requests.Session` (with `trust_env = False`) posting to `url`:
    the OTLP exporter's."""
    settings = settings or get_settings()
    proxies = _proxies(settings, socks_module="socks")  # requests speaks SOCKS through PySocks
    scheme = urlsplit(url).scheme.lower()
    proxy = None if _is_direct(url, settings) else proxies.get(scheme)
    verify = settings.ssl_cert_file or settings.ssl_cert_dir or True
    return {"proxies": {scheme: proxy.url} if proxy is not None else {}, "verify": verify}
