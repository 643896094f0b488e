"""Streaming a call's output to the host while it runs: coalesced, bounded, tied to the request's nonce.

Only calls that ask for it (`stream_limit` in their args) stream, so a trivial call pays nothing. Frames
are `{"id", "nonce", "event": "output", "stream", "data"}`; the host checks the nonce exactly as it does
for replies. Small reads are coalesced until `CHUNK` bytes are pending or `INTERVAL` seconds have passed
since the last frame, so a process printing one byte at a time costs a frame per interval, not per byte.
The total streamed per call is capped at `limit` bytes, and never more than the call's capture keeps
in its head (`OUT_HEAD`): nothing is streamed that the final result would not contain too. When the cap
is reached a last frame says so (`"capped": true`) and the rest stays in the final result only.
"""

import codecs
import time

from .settings import OUT_HEAD

INTERVAL = 0.1  # seconds: at most ~10 frames a second per call
CHUNK = 4096  # bytes pending that are sent without waiting for the interval


class OutputStream:
    """Collects a call's output and sends it in coalesced frames through `send` (a dict -> None)."""

    def __init__(self, send, rid, nonce, limit):
        self.send, self.rid, self.nonce = send, rid, nonce
        self.left = max(0, min(int(limit), OUT_HEAD))
        self.pending = {}  # stream name -> bytearray, in arrival order
        self.decoders = {}
        self.last = time.monotonic()
        self.capped = False

    @classmethod
    def for_request(cls, send, args):
        """The stream a request asked for, or None (no `stream_limit`, or a bad one)."""
        limit = args.get("stream_limit")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            return None
        return cls(send, args["_id"], args["_nonce"], limit)

    def add(self, name, data):
        if self.capped or not data:
            return
        take = data[: self.left]
        self.left -= len(take)
        if take:
            self.pending.setdefault(name, bytearray()).extend(take)
        if self.left <= 0:
            self.capped = True
            self.flush()
        elif sum(len(b) for b in self.pending.values()) >= CHUNK:
            self.flush()

    def wait(self, default):
        """Seconds until pending output is due (at most `default`): the select timeout of the caller."""
        if not self.pending:
            return default
        return max(0.0, min(default, self.last + INTERVAL - time.monotonic()))

    def tick(self):
        """Send pending output whose interval has passed."""
        if self.pending and time.monotonic() >= self.last + INTERVAL:
            self.flush()

    def flush(self, final=False):
        """Send what is pending (with `final`, including a multi-byte character cut at the end, unless
        the cap cut it)."""
        pending, self.pending = self.pending, {}
        for name, data in pending.items():
            decoder = self.decoders.setdefault(
                name, codecs.getincrementaldecoder("utf-8")("backslashreplace")
            )
            # A character the cap cut in half is not sent (the capture's text drops it too); one cut
            # by the end of the output is what the program wrote, and shows as its bytes.
            text = decoder.decode(bytes(data), final=final and not self.capped)
            if self.capped:
                decoder.reset()
            if text:
                self.send(
                    {"id": self.rid, "nonce": self.nonce, "event": "output", "stream": name, "data": text}
                )
        if self.capped and pending:
            self.send({"id": self.rid, "nonce": self.nonce, "event": "output", "stream": "stdout", "data": "",
                       "capped": True})  # fmt: skip
        self.last = time.monotonic()
