"""A response body read to a byte cap, its `Content-Encoding` decoded here a bounded slice at a time.

httpx's own decoding (`aiter_bytes`) inflates each network chunk in full, and honours stacked
encodings, before a caller could check a cap: 1 KB of `gzip, gzip` became hundreds of MB. Whatever
reads a body from a server we do not control (fetch_url's pages, web_search's provider replies)
reads the raw bytes with `read_capped` instead, and asks only for the codings it decodes
(`ACCEPT_ENCODING`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import httpx

# Only what `Inflater` decodes is asked for.
ACCEPT_ENCODING = "gzip, deflate"
# Output per decompress step: a bomb is inflated a slice at a time, and stops at the cap.
_STEP = 256 * 1024


class BodyEncodingError(Exception):
    """The body's `Content-Encoding` is refused or its bytes do not decode; the message names no URL
    (the caller adds the one it may show)."""


async def read_capped(response: httpx.Response, max_bytes: int) -> tuple[bytes, bool]:
    """`response`'s body decoded, at most `max_bytes` of it, and whether it was cut.

    Raises `BodyEncodingError` for a coding that is stacked, unknown or corrupt; httpx's errors from
    reading pass through. Past the cap nothing more is downloaded nor inflated.
    """
    inflater = Inflater.for_header(response.headers.get("content-encoding", ""))
    chunks: list[bytes] = []
    size = 0
    async for raw in response.aiter_raw():
        for piece in inflater.feed(raw, max_bytes - size + 1):
            chunks.append(piece)
            size += len(piece)
            if size > max_bytes:
                return b"".join(chunks)[:max_bytes], True
    return b"".join(chunks), False


class Inflater:
    """Decodes one `Content-Encoding` (identity, gzip or deflate) with bounded output per step."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.done = False
        self._head = b""  # the first bytes of a deflate body, which tell its format
        self._z: zlib._Decompress | None = self._new() if coding == "gzip" else None

    @classmethod
    def for_header(cls, header: str) -> Inflater:
        """The inflater for a `Content-Encoding` header; `BodyEncodingError` if it is not supported."""
        codings = [c.strip().lower() for c in header.split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1:
            # Real servers never stack encodings; each layer multiplies what a few bytes inflate to.
            raise BodyEncodingError(f"stacked content encodings ({header}), which are not supported")
        coding = {"x-gzip": "gzip"}.get(codings[0], codings[0]) if codings else "identity"
        if coding not in ("identity", "gzip", "deflate"):
            raise BodyEncodingError(f"an unsupported content encoding {coding!r} (gzip and deflate are)")
        return cls(coding)

    def _new(self, first: bytes = b"") -> zlib._Decompress:
        if self.coding == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" is zlib-wrapped by the standard, raw deflate from some servers.
        wrapped = len(first) >= 2 and first[0] & 0x0F == 8 and int.from_bytes(first[:2], "big") % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes, room: int) -> Iterator[bytes]:
        """Yield the decoded pieces of `data`; the caller stops iterating once it has `room` bytes."""
        if self.coding == "identity":
            yield data
            return
        if self._z is None:
            self._head += data
            if len(self._head) < 2:
                return
            self._z, data, self._head = self._new(self._head), self._head, b""
        while data and not self.done:
            try:
                piece = self._z.decompress(data, max(1, min(room, _STEP)))
            except zlib.error as exc:
                raise BodyEncodingError(f"a corrupt {self.coding} body ({exc})") from None
            if piece:
                room -= len(piece)
                yield piece
            data = self._z.unconsumed_tail
            if self._z.eof:
                # Another gzip member may follow (concatenated gzip is valid); anything else is ignored.
                rest = self._z.unused_data
                if self.coding == "gzip" and rest.startswith(b"\x1f\x8b"):
                    self._z = self._new()
                    data = rest
                else:
                    self.done = True


__all__ = ["ACCEPT_ENCODING", "BodyEncodingError", "Inflater", "read_capped"]
