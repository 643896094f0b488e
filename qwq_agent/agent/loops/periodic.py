"""Exact cycles on characters: the degenerate loop, whatever the script or spacing.

Works on characters, not words, so a run of digits without spaces (`,000,000,...`), Chinese text and
run-on paragraphs are caught like spaced English. Every few characters the newest tail is looked up
earlier in a bounded buffer; each earlier occurrence proposes a period p, and the repeat is measured
as how many trailing characters equal the ones p earlier (doubling then bisecting, with C-level slice
comparisons, so a check costs O(log n) comparisons of at most a few thousand characters).
"""

from __future__ import annotations

from qwq_agent.agent.loops.config import LoopDetectorConfig

__all__ = ["PeriodicTail", "longest_cycle"]


class PeriodicTail:
    """Keeps the recent text and reports the longest exact cycle that ends at the tail."""

    def __init__(self, config: LoopDetectorConfig) -> None:
        self.config = config
        self._buf = ""
        self._keep = 2 * config.periodic_max_period + config.periodic_min_run + 64
        self.period = 0  # the cycle found at the last check (0 = none)
        self.run = 0  # characters equal to those one period earlier, ending at the tail
        self.run_bytes = 0  # the same run in UTF-8 bytes (about 4 per token in any script)
        self._copying = False  # the tail was a copy at the last check
        self.copies: list[int] = []  # where each new stretch of copied tail began (recent ones)

    def extend(self, text: str) -> None:
        """Append consumed text; the caller checks at fixed positions so chunking cannot matter."""
        buf = self._buf + text
        if len(buf) > 2 * self._keep:
            buf = buf[-self._keep :]
        self._buf = buf

    def check(self) -> int:
        """Measure the cycle that ends at the text consumed so far; return its run (0 = none)."""
        cfg = self.config
        buf = self._buf
        best_run, best_p = longest_cycle(
            buf, cfg.periodic_anchor_chars, cfg.periodic_max_period, cfg.periodic_max_tries
        )
        self.period, self.run = best_p, best_run
        # A character of Chinese is about a token, one of English a quarter: the run is weighed in bytes
        # so that the same number of tokens copied counts the same in any script.
        self.run_bytes = len(buf[len(buf) - best_run :].encode("utf-8", "surrogatepass")) if best_run else 0
        return self.run_bytes

    def recent(self, n: int) -> str:
        """The last `n` characters consumed, at most the buffer's keep (so stream cuts cannot matter)."""
        return self._buf[-min(n, self._keep) :]

    def check_copy(self, pos: int) -> int:
        """Note whether the tail is a long verbatim copy of earlier text; return the copies so far.

        A copy counts once per stretch: consecutive checks inside one copied paragraph are one copy.
        `pos` is where the check is (characters consumed), kept for each copy's start.
        """
        cfg = self.config
        buf = self._buf
        n = _tail_chars(buf, cfg.copy_min_chars)
        if len(buf) <= n:
            return len(self.copies)
        lo = max(0, len(buf) - cfg.periodic_max_period - n)
        # The earlier occurrence must start before the tail does (it may overlap it: short cycles).
        copying = buf.find(buf[-n:], lo, len(buf) - 1) >= 0
        if copying and not self._copying:
            self.copies.append(pos)
            if len(self.copies) > cfg.copy_count:
                del self.copies[0]
        self._copying = copying
        return len(self.copies)


def longest_cycle(buf: str, anchor_chars: int, max_period: int, tries: int) -> tuple[int, int]:
    """(run, period) of the longest exact cycle ending at the tail of `buf`; (0, 0) when none.

    The last `anchor_chars` are looked up earlier (newest first, `tries` occurrences, within
    `max_period`); each occurrence proposes a period, measured by how many trailing characters equal
    the ones a period earlier.
    """
    a = anchor_chars
    if len(buf) < 2 * a:
        return 0, 0
    anchor = buf[-a:]
    lo = max(0, len(buf) - max_period - a)
    end = len(buf) - 1  # occurrences must start before the tail's own anchor
    best_run, best_p = 0, 0
    for _ in range(tries):
        at = buf.rfind(anchor, lo, end)
        if at < 0:
            break
        p = len(buf) - a - at
        run = _repeat_len(buf, p)
        if run > best_run:
            best_run, best_p = run, p
        end = at + a - 1
    return best_run, best_p


def _tail_chars(buf: str, size: int) -> int:
    """How many trailing characters of `buf` hold `size` UTF-8 bytes (all of it when it holds fewer).

    Lengths are weighed in bytes, about 4 per token in English and in Chinese alike.
    """
    if buf[-size:].isascii():
        return size
    lo, hi = size // 4, size  # at most 4 bytes a character
    while lo < hi:
        mid = (lo + hi) // 2
        if len(buf[-mid:].encode("utf-8", "surrogatepass")) >= size:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _repeat_len(buf: str, p: int) -> int:
    """How many trailing characters of `buf` equal the characters `p` earlier."""
    limit = len(buf) - p
    n = len(buf)
    good, step = 0, 64
    # Doubling then bisection; each probe compares whole slices in C.
    while True:
        k = min(step, limit)
        if buf[n - k :] != buf[n - k - p : n - p]:
            bad = k
            break
        good = k
        if k == limit:
            return good
        step *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        if buf[n - mid :] == buf[n - mid - p : n - p]:
            good = mid
        else:
            bad = mid
    return good
