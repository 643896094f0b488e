"""`redact_url`: a URL fit to print or log, its credentials hidden.

A model server, an MCP server, an OTLP collector or a search endpoint behind basic auth is given as
`http://user:password@host` (httpx and the OTLP exporter send the userinfo as basic auth); a hosted
one often takes its key in the query instead (`https://host/mcp?api_key=...`). Such URLs are named in error lines (stderr goes to CI logs and cron mail) and in tool observations (the model's
prompt, the trace, the spans), so every place that shows one passes it through here, and a library's
error text, which may quote the URL it failed on, through `redact_urls_in`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from urllib.parse import unquote_plus

# Read from the raw text, so a URL that does not parse (the one an error line is about) is redacted
# too, and one given without a scheme (`user:pw@host:30000`) as well.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
_LETTERS = frozenset(string.ascii_letters)
_PORT = re.compile(r":[0-9]*")
_HOST_PORT = re.compile(r"[^:@]+:[0-9]+")
# An IP literal host (`[::1]:8080`, `[fe80::1%25eth0]`): its colons are no password's.
_IP_LITERAL = re.compile(r"\[[0-9A-Za-z:.%_~\-]*\](?::[0-9]*)?")


def _scheme_start(text: str, at: int, floor: int) -> int:
    """Where the scheme of the `://` at index `at` of `text` starts, read back no further than `floor`:
    the first letter of the scheme characters before it; `at` when there is none."""
    start = at
    while start > floor and text[start - 1] in _SCHEME_CHARS:
        start -= 1
    while start < at and text[start] not in _LETTERS:  # a scheme starts with a letter
        start += 1
    return start


def _userinfo_end(rest: str) -> int:
    """Where the userinfo of `rest` (a URL after its `scheme://`) ends: the index of its `@`, or -1.

    By the standard it ends at the first `/ ? #`, but an operator pastes passwords with those
    unencoded (`user:S3CR/ET@host`): the `@` that ends such a userinfo comes after them. Such an `@`
    is read as the end of the userinfo when what precedes the first `/ ? #` cannot be a host (a colon
    followed by no port) or what follows the `@` is a `host:port`; else it is part of a path
    (`host/users/@me`) and the URL has no userinfo. An IP literal (`[::1]:8080`) before the first
    `/ ? #` is the host: no userinfo can follow it.
    """
    stop = re.search(r"[/?#]", rest)
    head = rest if stop is None else rest[: stop.start()]
    if "@" in head:
        return head.rindex("@")
    last = rest.rfind("@")
    if last < 0 or _IP_LITERAL.fullmatch(head):
        return -1
    colon = head.find(":")
    not_a_port = colon >= 0 and not _PORT.fullmatch(head[colon:])
    after = re.split(r"[/?#]", rest[last + 1 :], maxsplit=1)[0]
    return last if not_a_port or _HOST_PORT.fullmatch(after) else -1


# Query parameters that carry a secret: API keys, tokens, signatures of presigned URLs, OAuth codes.
_SECRET_PARAMS = frozenset(
    {
        "key", "api_key", "apikey", "api-key", "x-api-key", "token", "access_token", "auth",
        "authorization", "secret", "client_secret", "password", "passwd", "pwd", "sig", "signature",
        "code",
    }
)  # fmt: skip
# ... and any name ending so: `hf_token`, `X-Amz-Security-Token`, `X-Amz-Signature`, `apiKey`.
_SECRET_SUFFIX = re.compile(r"[_\-.](key|token|secret|signature|password)$", re.IGNORECASE)
_CAMEL_SECRET_SUFFIX = re.compile(r"[a-z0-9](Key|Token|Secret|Signature|Password)$")
# ... and the same names run together in one word (`accesstoken`, `apitoken`, `clientsecret`): a
# `key` only after a word that makes it a credential (`monkey`, `hotkey` are no secrets).
_SECRET_ENDINGS = (
    "token", "secret", "password", "passwd", "signature",
    "apikey", "accesskey", "secretkey", "privatekey", "authkey", "sessionkey",
)  # fmt: skip
_QUERY_OR_FRAGMENT = re.compile(r"[?#]")
# What separates query parameters: `&`, `;`, and `&` as Go's JSON encoder writes it (`\u0026`).
_PARAM_SEP = re.compile(r"([&;]|\\u0026)")


def _is_secret_param(name: str) -> bool:
    name = unquote_plus(name).strip()
    return (
        name.lower() in _SECRET_PARAMS
        or name.lower().endswith(_SECRET_ENDINGS)
        or _SECRET_SUFFIX.search(name) is not None
        or _CAMEL_SECRET_SUFFIX.search(name) is not None
    )


# How deep percent-encoded URLs in query values are decoded (`?next=https%3A%2F%2Fh%2F%3Fnext%3D...`);
# a value still holding one past that is hidden whole. Bounds the work to a few passes over the URL.
_MAX_ENCODED_DEPTH = 3


def _encoded_url_with_secret(value: str, depth: int) -> bool:
    """Whether `value`, a query value, is a percent-encoded URL that carries credentials
    (`https%3A%2F%2Fh%2F%3Ftoken%3DT`): shown decoded and redacted it would not be the same value, so
    it is hidden whole. A URL in a value that is not encoded is redacted in place (`_redact_nested`)."""
    if "%" not in value:
        return False
    decoded = unquote_plus(value)
    if "://" not in decoded:
        return False
    return depth >= _MAX_ENCODED_DEPTH or _redact_in(decoded, depth + 1) != decoded


def _redact_query(url: str, start: int, depth: int = 0) -> str:
    """`url` with the values of its secret query parameters (after index `start`, past any userinfo)
    replaced by `***`; their names and the other parameters are kept, so the URL stays recognisable.
    So is a value that is a percent-encoded URL carrying credentials."""
    mark = _QUERY_OR_FRAGMENT.search(url, start)
    if mark is None or mark.group() != "?":
        return url
    end = url.find("#", mark.end())
    end = len(url) if end < 0 else end
    pieces = _PARAM_SEP.split(url[mark.end() : end])
    for i in range(0, len(pieces), 2):  # the separators sit at the odd indexes
        name, sep, value = pieces[i].partition("=")
        if sep and value and (_is_secret_param(name) or _encoded_url_with_secret(value, depth)):
            pieces[i] = f"{name}=***"
    return f"{url[: mark.end()]}{''.join(pieces)}{url[end:]}"


def _redact_nested(url: str, begin: int, depth: int) -> str:
    """`url` with every URL nested in it after index `begin` (`?next=https://h2/?token=T`, a proxy's
    `/fetch/https://u:pw@h2/`) redacted as a URL of its own, up to the next nested one: each part of
    `url` is read once."""
    if url.find("@", begin) < 0 and url.find("?", begin) < 0:
        return url
    starts: list[int] = []
    floor = begin
    at = url.find("://", begin)
    while at >= 0:
        start = _scheme_start(url, at, floor)
        if start < at:
            starts.append(start)
        floor = at + 3
        at = url.find("://", floor)
    if not starts:
        return url
    ends = [*starts[1:], len(url)]
    parts = [url[a:b] for a, b in zip(starts, ends, strict=True)]
    # Only a userinfo or a query has anything to hide.
    return url[: starts[0]] + "".join(_redact(p, False, depth) if "@" in p or "?" in p else p for p in parts)


def redact_url(url: str, *, keep_user: bool = False) -> str:
    """`url` with its credentials replaced by `***`.

    A password becomes `user:***@host`; a user name alone, often a token itself, is replaced whole
    (`***@host`), unless `keep_user` (an ssh login: `ssh://user@host`). The value of a query parameter
    named like a secret (`api_key`, `token`, `sig`, `code`, `..._key`, `..._token`, ...) becomes `***`
    (`?api_key=***&region=eu`). A URL nested in another (`?next=https://h2/?token=T`) is redacted as
    one, and a percent-encoded one carrying credentials is hidden whole (`?next=***`). A URL without
    credentials comes back unchanged; so does one whose only `@` is in its path."""
    return _redact(url, keep_user, 0)


def _redact(url: str, keep_user: bool, depth: int) -> str:
    """`redact_url`, `depth` levels into percent-encoded URLs."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    end = _userinfo_end(url[start:])
    if end < 0:
        shown, after = url, start
    else:
        user, sep, _ = url[start : start + end].partition(":")
        if sep:
            shown = f"{url[:start]}{user}:***{url[start + end :]}"
        else:
            shown = url if keep_user else f"{url[:start]}***{url[start + end :]}"
        after = len(shown) - (len(url) - start - end)  # where the `@` is in `shown`
    return _redact_nested(_redact_query(shown, after, depth), after, depth)


def has_password(url: str) -> bool:
    """Whether `url` carries a password (`user:password@host`), read as `redact_url` reads it."""
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    end = _userinfo_end(url[start:])
    return end >= 0 and ":" in url[start : start + end]


# A URL inside free text: from its scheme to the next blank, quote or angle bracket (httpx quotes the
# URL it names: `for url 'http://user:pw@host/x'`; it percent-encodes any of those in a password).
# Found without a regex: `[A-Za-z][A-Za-z0-9+.-]*://` tried at every position of a long run of letters
# cost O(n^2) (200 K characters of an MCP server's error text froze the event loop for ~30 s).
_URL_END = re.compile(r"[\s'\"<>`]")

# Punctuation that ends a sentence after a URL (`see http://host/x?key=K.`): not part of the URL.
_TRAILING = ".,;:!?)]}"


# `://`, or `:\/\/` as JSON encoders that escape slashes write it (PHP's, Java's): a URL in a JSON
# body a library quotes.
_SEPARATOR = re.compile(r":(?://|\\/\\/)")
_ESCAPED_SLASH = "\\/"


def _url_spans(text: str) -> Iterator[tuple[int, int, bool]]:
    """Where the URLs of `text` are, `(start, end, escaped)`, left to right, in one pass: each `://`
    is looked at once, and the scheme before it is walked back no further than the previous `://` or
    URL. `escaped`: the URL's slashes are written `\\/` (its `:\\/\\/`)."""
    done = 0
    found = _SEPARATOR.search(text)
    while found is not None:
        at, after = found.start(), found.end()
        start = _scheme_start(text, at, done)
        stop = _URL_END.search(text, after) if start < at else None
        end = after if start == at else len(text) if stop is None else stop.start()
        if end == after:  # no scheme, or nothing after it: no URL
            found = _SEPARATOR.search(text, at + 1)
            continue
        yield start, end, after - at > 3
        done = end
        found = _SEPARATOR.search(text, end)


def _cut(text: str, max_chars: int) -> str:
    """`text` cut to its head and tail, `max_chars` in all, the cuts moved back to the blanks or quotes
    before them: a URL cut in two could show the half of a password that precedes its `@`."""
    tail_at = len(text) - max_chars // 2
    head = text[: max_chars - max_chars // 2]
    tail = text[tail_at:]
    if not _URL_END.match(text, len(head)):
        stop = _URL_END.search(head[::-1])
        head = head[: len(head) - stop.start()] if stop else ""
    if not _URL_END.match(text, tail_at - 1):
        stop = _URL_END.search(tail)
        tail = tail[stop.start() :] if stop else ""
    omitted = len(text) - len(head) - len(tail)
    return f"{head}\n[... {omitted} chars omitted from the middle ...]\n{tail}"


def redact_urls_in(text: str, *, max_chars: int | None = None) -> str:
    """`text` with every URL in it passed through `redact_url`: for an error message of a library (an
    HTTP status error quotes the URL it was raised for, credentials and all). Text outside the URLs,
    the punctuation after one included, is kept as it is. Takes time linear in `len(text)`.

    A text longer than `max_chars` (one from a peer, which could send megabytes) is first cut to its
    head and tail, as a tool's output is; a cut never falls inside a URL: the word it falls in is
    left out with the middle."""
    if max_chars is not None and len(text) > max_chars:
        text = _cut(text, max_chars)
    return _redact_in(text, 0)


# A query or fragment in free text: from its `?` or `#` to the next blank, quote or angle bracket.
_TEXT_PARAMS = re.compile(r"[?#][^\s'\"<>`]*")
_TEXT_PARAM_SEP = re.compile(r"([&;?#]|\\u0026)")


def _hide_text_params(found: re.Match[str]) -> str:
    run = found[0]
    params = run.rstrip(_TRAILING)  # the punctuation closing a sentence is no part of a value
    pieces = _TEXT_PARAM_SEP.split(params)
    for i in range(0, len(pieces), 2):  # the separators sit at the odd indexes
        name, sep, value = pieces[i].partition("=")
        if sep and value and value != "***" and _is_secret_param(name):
            pieces[i] = f"{name}=***"
    return "".join(pieces) + run[len(params) :]


def redact_secrets_in(text: str, *, max_chars: int | None = None) -> str:
    """`redact_urls_in`, and also the values of secret parameters in a query or a fragment outside a
    whole URL (`?key=K`, `#access_token=T`): HTTP libraries quote the request target alone in their
    errors (urllib3's `Max retries exceeded with url: /v1/traces?key=K`), where no scheme marks a URL,
    and an OAuth callback carries its token in the fragment. A `name=value` after no `?` or `#`
    (`exit;code=1`) is no query. For log lines, which quote libraries. Linear in `len(text)`."""
    text = redact_urls_in(text, max_chars=max_chars)
    if "=" not in text:
        return text
    return _TEXT_PARAMS.sub(_hide_text_params, text)


def _redact_in(text: str, depth: int) -> str:
    pieces: list[str] = []
    done = 0
    for start, end, escaped in _url_spans(text):
        url = text[start:end].rstrip(_TRAILING)
        if escaped:  # `https:\/\/`: read with its slashes, written back escaped
            shown = _redact(url.replace(_ESCAPED_SLASH, "/"), False, depth).replace("/", _ESCAPED_SLASH)
        else:
            shown = _redact(url, False, depth)
        pieces += [text[done:start], shown, text[start + len(url) : end]]
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def hide_userinfo(url: str) -> str:
    """`url` with everything between its scheme (if any) and its last `@` shown as `***`.

    For a URL already known to be misread (a password with an unencoded `/ ? #`): where its password
    ends is unclear, so user name and password are hidden together. Secret query parameters after
    that `@` are hidden as `redact_url` hides them.
    """
    scheme = _SCHEME.match(url)
    start = scheme.end() if scheme else 0
    at = url.rfind("@")
    if at < start:
        return _redact(url, False, 0)  # no userinfo: hidden as `redact_url` hides it
    return f"{url[:start]}***{_redact_nested(_redact_query(url, at), at, 0)[at:]}"


# An http(s) URL as a client is given one: the scheme in any case, then a host. The MCP server spec
# has long taken less (the scheme in lower case, nothing after it asked), and still does.
_HTTP_URL = re.compile(r"https?://[^/?#\s]", re.IGNORECASE)
_HTTP_SCHEME = re.compile(r"https?://")


def is_http_url(text: str, *, scheme_only: bool = False) -> bool:
    """Whether `text` starts as an http:// or https:// URL: that scheme (any case) and a host.

    `scheme_only`: the MCP server URL's rule, `http://` or `https://` in lower case, whatever follows.
    """
    return (_HTTP_SCHEME if scheme_only else _HTTP_URL).match(text) is not None
