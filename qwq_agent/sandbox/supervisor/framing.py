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
    """Keeps the first `head` and last `tail` bytes of a stream and counts what fell between."""

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

    def dropped(self):
        return self.total - len(self.head) - len(self.tail)

    def text(self):
        head = self.head.decode("utf-8", "backslashreplace")
        tail = self.tail.decode("utf-8", "backslashreplace")
        dropped = self.dropped()
        if dropped:
            return f"{head}\n[... {dropped} bytes dropped ...]\n{tail}"
        return head + tail


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
