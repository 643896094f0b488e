"""Length-prefixed JSON frames, and capped capture of output streams."""

import json
import os
import select
import struct
import time

from .settings import OUT_HEAD, OUT_TAIL


class RequestError(Exception):
    """An error reported to the host as `{"type": kind, "message": ...}`."""

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def path_text(name):
    """A file name as text that encodes as UTF-8: bytes that are not UTF-8 become `\\xNN`.

    `os` hands such names back with lone surrogates (surrogateescape); passed through as they are, the
    host gets a string nothing can encode, and the first thing that sends it on (the model request) fails.
    """
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make (e.g. from a JSON escape)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def encode_frame(obj):
    body = json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return struct.pack(">I", len(body)) + body


def read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_into(fd, n):
    """Exactly `n` bytes from `fd` as a bytearray read in place (no chunk list, no join), or None at EOF."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if not k:
            return None
        got += k
    return buf


def skip(fd, n):
    """Read and drop `n` bytes; False at EOF."""
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return False
        n -= len(chunk)
    return True


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def cap_text(text, head=OUT_HEAD, tail=OUT_TAIL, unit="characters"):
    """`text` cut to its first `head` and last `tail` characters, saying how many fell between."""
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= head + tail:
        return text
    return f"{text[:head]}\n[... {len(text) - head - tail} {unit} dropped ...]\n{text[len(text) - tail :]}"


class Capture:
    """Keeps the first `head` and last `tail` bytes of a stream and counts what fell between.

    The text shown cuts between characters: a UTF-8 character the head or tail cut in half is dropped
    whole (and counted), so no half of it reaches the text as `\\xNN` escapes the program never wrote.
    """

    def __init__(self, head=OUT_HEAD, tail=OUT_TAIL):
        self.head_cap, self.tail_cap = head, tail
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, data):
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_cap:
                del self.tail[: len(self.tail) - self.tail_cap]

    def _kept(self):
        """(head, tail) as shown: cut back to whole characters where something was dropped between."""
        if self.total == len(self.head) + len(self.tail):
            return bytes(self.head), bytes(self.tail)
        return bytes(self.head[: utf8_whole(self.head)]), bytes(self.tail[utf8_start(self.tail) :])

    def dropped(self):
        head, tail = self._kept()
        return self.total - len(head) - len(tail)

    def text(self):
        head, tail = self._kept()
        dropped = self.total - len(head) - len(tail)
        if dropped:
            head_text = head.decode("utf-8", "backslashreplace")
            tail_text = tail.decode("utf-8", "backslashreplace")
            return f"{head_text}\n[... {dropped} bytes dropped ...]\n{tail_text}"
        return (head + tail).decode("utf-8", "backslashreplace")


def utf8_whole(data):
    """Length of `data` without a UTF-8 character cut off at its end (bytes that are not UTF-8 stay)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead byte
            continue
        need = 2 if 0xC0 <= byte < 0xE0 else 3 if 0xE0 <= byte < 0xF0 else 4 if 0xF0 <= byte < 0xF8 else 1
        return len(data) - back if need > back else len(data)
    return len(data)


def utf8_start(data):
    """Where the first whole character of `data` starts: past continuation bytes of one cut at its
    start (at most 3: more are not the rest of a character but bytes as the program wrote them)."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return skip


def drain(fds, captures, deadline):
    """Read the pipes in `fds` into `captures` until EOF on all, or nothing arrives before `deadline`.

    Returns the fds still open. A writer that never pauses is cut off half a second past the deadline.
    """
    open_fds = list(fds)
    while open_fds:
        wait = max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select(open_fds, [], [], wait)
        if not ready or time.monotonic() > deadline + 0.5:
            break
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if data:
                captures[fd].add(data)
            else:
                open_fds.remove(fd)
    return open_fds
