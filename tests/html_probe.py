"""Counting the scans CPython's HTMLParser makes for a closer that is not in the page.

Each such scan reads to the end of the input and fails; one per unclosed construct is what made the
parser quadratic. Counting them measures the parser's work without a clock: a linear parse makes at
most a couple (an incomplete construct at the very end, seen by `feed` and again by `close`).
"""

from __future__ import annotations

import html.parser
from typing import Any

import pytest

# The HTMLParser methods that look ahead for the end of a construct and return -1 when it is missing.
SCANNERS = (
    "parse_starttag",
    "parse_endtag",
    "parse_comment",
    "parse_pi",
    "parse_html_declaration",
    "parse_marked_section",
    "parse_bogus_comment",
)


def count_failed_scans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A list that collects the name of every parser look-ahead that found no end, while the test runs.

    The real methods still run; they are wrapped only to see their answer.
    """
    failed: list[str] = []
    for name in SCANNERS:
        original = getattr(html.parser.HTMLParser, name)

        def wrapped(self: Any, i: int, *args: Any, _original: Any = original, _name: str = name) -> int:
            end = int(_original(self, i, *args))
            if end < 0:
                failed.append(_name)
            return end

        monkeypatch.setattr(html.parser.HTMLParser, name, wrapped)
    return failed
