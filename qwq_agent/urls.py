"""`redact_url`: a URL fit to print or log, its credentials hidden.

A model server behind basic auth is given as `http://user:password@host`; the URL is shown in error
lines (stderr goes to CI logs and cron mail), so every place that prints one passes it through here.
"""

from __future__ import annotations

import re

# The userinfo of `scheme://userinfo@host...`: read from the raw text, so a URL that does not parse
# (the one an error line is about) is redacted too.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<info>[^/?#]*)@")


def redact_url(url: str) -> str:
    """`url` with its password replaced by `***` (`user:***@host`); a user name alone, often a token
    itself, is replaced whole (`***@host`). A URL without credentials comes back unchanged."""

    def hide(m: re.Match[str]) -> str:
        user, sep, _ = m["info"].partition(":")
        return f"{m['scheme']}{user}:***@" if sep else f"{m['scheme']}***@"

    return _USERINFO.sub(hide, url, count=1)
