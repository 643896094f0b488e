"""Where `run` finds its model: the server's URL, API and model name, and the check of that URL.

`preflight` checks the URL before anything starts and `model_check` before it connects; both take it
from here, as `run` does.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple
from urllib.parse import urlsplit

from qwq_agent.cli.errors import EXIT_MODEL, CliError
from qwq_agent.settings import get_settings
from qwq_agent.urls import hide_userinfo, redact_url


class Endpoint(NamedTuple):
    """Where `run` finds its model, from the flags and the settings."""

    url: str
    api: str
    model: str
    connect_timeout_s: float


def model_endpoint(args: argparse.Namespace) -> Endpoint:
    """Flags first, then the environment (`qwq_agent.settings`): --api openai honours OPENAI_BASE_URL."""
    s = get_settings()
    api = args.api or s.api
    if api == "openai":
        url = args.model_url or s.openai_base_url or s.model_url
        model = args.model or s.openai_model or s.model
    else:
        url, model = args.model_url or s.model_url, args.model or s.model
    return Endpoint(url, api, model, s.model_connect_timeout_s)


def check_model_url(url: str) -> None:
    """The model URL must be `http(s)://host[:port]`; a bare host or another scheme is refused.

    A URL with an `@` holds a password, whole or in part: no message quotes urlsplit's reading of
    it (its error text, its path), which cuts a password with an unencoded `/ ? #` anywhere.
    """
    secret = "@" in url
    shown = hide_userinfo(url) if secret else redact_url(url)  # a key may be in the query too
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for an unclosed [
        why = " (check the host)" if secret else f" ({exc})"
        raise CliError(
            f"model URL {shown!r} is not a valid URL{why}",
            "use e.g. http://127.0.0.1:30000 (an IPv6 host in brackets: http://[::1]:30000)",
            code=EXIT_MODEL,
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        # `host:30000` parses as scheme "host": suggest the text as given, after any scheme it had
        rest = url.split("://", 1)[-1]
        suggestion = hide_userinfo(rest) if secret else redact_url(rest)
        raise CliError(
            f"model URL {shown!r} is not an http:// or https:// URL",
            f"use e.g. --model-url http://{suggestion or '127.0.0.1:30000'} (or set QWQ_MODEL_URL)",
            code=EXIT_MODEL,
        )
    if secret and "@" not in parts.netloc:
        # The `@` ends up in the path: a password with an unencoded `/ ? #`, most likely.
        raise CliError(
            f"model URL {shown!r} has an @ after a / ? or # (read as part of the path)",
            "percent-encode / ? # @ in the user name and password (%2F %3F %23 %40)",
            code=EXIT_MODEL,
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        why = "its port is not a number from 0 to 65535" if secret else str(exc)
        raise CliError(
            f"model URL {shown!r}: {why}", "use e.g. http://127.0.0.1:30000", code=EXIT_MODEL
        ) from None
