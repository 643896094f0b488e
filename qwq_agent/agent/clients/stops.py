"""Stop strings applied by the client: the text ends at the earliest match, whatever the server did.

SGLang 0.5.17 checks several stop strings against the tail of the output in list order, so a single token
that holds two of them can end the text at the later one (seen on an H200: stops `e`, `a`, `o`, one token
`ologia`, text `ologi`, matched `a`). What we promise instead: the text a client returns never contains a
stop string, it ends where the first stop string in the text begins, and `matched_stop` names that string.
Streamed deltas hold back a tail that could still grow into a stop string, so nothing past the cut is ever
yielded.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Feed streamed text; get back what is safe to emit and, once one is found, the earliest stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self.matched: str | None = None
        self._held = ""

    def feed(self, delta: str) -> str:
        """Text that can be emitted now. After a match, the text up to it, then always ''."""
        if self.matched is not None or not delta:
            return ""
        text = self._held + delta
        hit = self._earliest(text)
        open_at = len(text) - self._open_prefix(text)
        # A complete stop string decides only if no longer one could still complete starting before it
        # (stops `<` and `><<`, text `><` so far: `><<` may yet begin at 0, ahead of the `<` at 1).
        if hit is not None and hit[0] <= open_at:
            at, self.matched = hit
            self._held = ""
            return text[:at]
        self._held = text[open_at:]
        return text[:open_at]

    def flush(self) -> str:
        """What was held back when the stream ends: up to the earliest stop string in it (then `matched`)."""
        held, self._held = self._held, ""
        if self.matched is not None:
            return ""
        hit = self._earliest(held)
        if hit is not None:
            at, self.matched = hit
            return held[:at]
        return held

    def cut(self, text: str) -> tuple[str, str | None]:
        """Apply the promise to a whole text: (text before the earliest stop string, that string or None)."""
        hit = self._earliest(text)
        return (text, None) if hit is None else (text[: hit[0]], hit[1])

    def _earliest(self, text: str) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for stop in self.stops:
            at = text.find(stop)
            # At equal positions the shorter string wins: streamed, it is the one complete first, so the
            # answer does not depend on how the text was split into deltas.
            if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(stop) < len(best[1]))):
                best = (at, stop)
        return best

    def _open_prefix(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
