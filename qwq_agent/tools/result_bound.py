"""A tool's return value cut, in Python, to what one output can show, before pydantic-core serialises it.

pydantic-core pulls an iterator (a generator, `itertools.repeat`, a file) whole, in Rust, holding the
GIL: `itertools.repeat(0, 10**7)` stood the event loop still for seconds, an endless iterator ate
memory past every time limit, and a thread given up on inside that Rust code took the process down at
interpreter exit (CPython's unwinding of a daemon thread aborts across Rust frames). Here iterators are
pulled in Python (which lets other threads run), only as far as the output cap can show, and a pull
stops once the call was given up on; pydantic-core gets a value with nothing left to pull.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections import deque
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from pydantic import BaseModel

from qwq_agent.tools.daemon_threads import call_abandoned
from qwq_agent.tools.output_cap import MAX_OUTPUT_CHARS

__all__ = ["MAX_RESULT_CHARS", "MAX_RESULT_ITEMS", "bound_value", "cut_note", "output_limit"]

# Every item takes at least two characters of JSON ("0, "): past this many the text is over the output
# cap, so a value is never cut short of what the cap would have shown of it.
MAX_RESULT_ITEMS = MAX_OUTPUT_CHARS // 2
# Text (the strings' lengths) past which no more items are taken: the cap would cut it anyway.
MAX_RESULT_CHARS = MAX_OUTPUT_CHARS
# Containers deeper than this are replaced by a note: passed on, an iterator inside was pulled whole
# by pydantic-core.
_MAX_DEPTH = 200
TOO_DEEP = f"[nested deeper than {_MAX_DEPTH} levels: left out]"

_SEQUENCES = (list, tuple, set, frozenset, deque)
# Kept head and tail when cut: the tail of a list (a log's last lines) usually holds the error.
_ORDERED = (list, tuple, deque)
_SCALARS = (str, bytes, int, float, bool, type(None))

# The output cap of the registry running the call (contextvars reach the tool's thread).
_output_chars: ContextVar[int] = ContextVar("qwq_output_chars", default=MAX_OUTPUT_CHARS)


@contextlib.contextmanager
def output_limit(max_chars: int) -> Iterator[None]:
    """Within it, `bound_value` cuts to what an output of `max_chars` characters can show."""
    token = _output_chars.set(max_chars)
    try:
        yield
    finally:
        _output_chars.reset(token)


def cut_note(items: int) -> str:
    """The line an output cut at `items` items ends with."""
    return f"[output cut at {items:,} items: the tool returned more than an output can show]"


class _Walk:
    """One walk over a value: what it has taken so far, and whether it had to change the value."""

    def __init__(self, max_items: int, max_chars: int, stop: Callable[[], bool]) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self.stop = stop
        self.items = 0
        self.chars = 0
        self.cut = False
        self.changed = False  # an iterator was pulled, or something cut: the copy is what gets serialised
        self.edits = 0  # changes and cuts so far: an object's fields are copied only if one was made
        self.on_path: set[int] = set()

    def full(self) -> bool:
        return self.items >= self.max_items or self.chars >= self.max_chars

    def take(self, value: Any, depth: int) -> Any:
        """`value` as one item: counted, and walked if it is a container."""
        self.items += 1
        if isinstance(value, str | bytes):
            self.chars += len(value)
            return value
        return self.walk(value, depth)

    def walk(self, value: Any, depth: int) -> Any:
        if isinstance(value, _SCALARS):
            return value
        is_iterator = isinstance(value, Iterator)
        is_object = isinstance(value, BaseModel) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        )
        if not (is_iterator or is_object or isinstance(value, (dict, *_SEQUENCES))):
            return value  # a number, a datetime...: the serialiser's, as it is
        if depth > _MAX_DEPTH:
            self.changed = True
            self.edits += 1
            return TOO_DEEP
        if id(value) in self.on_path:
            return value  # a cycle: left for the serialiser to refuse, as it does
        self.on_path.add(id(value))
        try:
            if is_object:
                return self.fields(value, depth)
            if isinstance(value, dict):
                out: dict[Any, Any] = {}
                for key, item in value.items():
                    if self.full():
                        self.mark_cut()
                        break
                    if isinstance(key, str):
                        self.chars += len(key)
                    out[key] = self.take(item, depth + 1)
                return out
            if is_iterator:
                self.changed = True
                self.edits += 1
                return self.pulled(value, depth)
            if isinstance(value, _ORDERED):
                return self.head_and_tail(value, depth)
            taken = []
            for item in value:
                if self.full():
                    self.mark_cut()
                    break
                taken.append(self.take(item, depth + 1))
            return taken
        finally:
            self.on_path.discard(id(value))

    def mark_cut(self) -> None:
        self.cut = True
        self.edits += 1

    def fields(self, obj: Any, depth: int) -> Any:
        """A dataclass or model, its field values walked (pydantic-core looks into them): the same
        object when none changed, else a shallow copy holding the walked values."""
        if isinstance(obj, BaseModel):
            values = dict(obj.__dict__) | dict(obj.__pydantic_extra__ or {})
        else:
            values = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if hasattr(obj, f.name)}
        edits = self.edits
        walked = {name: self.walk(item, depth + 1) for name, item in values.items()}
        if self.edits == edits:
            return obj
        if isinstance(obj, BaseModel):
            return obj.model_copy(update=walked)
        out = copy.copy(obj)
        for name, item in walked.items():
            object.__setattr__(out, name, item)  # a frozen dataclass too: the copy is ours
        return out

    def head_and_tail(self, seq: Any, depth: int) -> list[Any]:
        """A list's items, as many as fit: past that, half the room went to its head and half to its
        tail, with a line between saying how many were left out."""
        room_items, room_chars = self.max_items - self.items, self.max_chars - self.chars
        start_items, start_chars = self.items, self.chars
        head = []
        n = len(seq)
        i = 0
        while i < n:
            if self.items - start_items >= room_items // 2 or self.chars - start_chars >= room_chars // 2:
                break
            head.append(self.take(seq[i], depth + 1))
            i += 1
        if i == n:
            return head
        tail: list[Any] = []
        j = n
        while j > i and not self.full():
            j -= 1
            tail.append(self.take(seq[j], depth + 1))
        if j == i:
            return head + tail[::-1]  # it all fitted
        self.mark_cut()
        return [*head, f"[{j - i:,} items left out]", *tail[::-1]]

    def pulled(self, iterator: Iterator[Any], depth: int) -> list[Any]:
        taken = []
        for item in iterator:
            if self.stop():  # given up on: nobody will read the output
                self.mark_cut()
                break
            if self.full():
                self.mark_cut()  # one item past the cap, so an iterator that fits exactly is not "cut"
                break
            taken.append(self.take(item, depth + 1))
        return taken


def bound_value(
    value: Any,
    *,
    max_items: int | None = None,
    max_chars: int | None = None,
    stop: Callable[[], bool] = call_abandoned,
) -> tuple[Any, int | None]:
    """`value` with its iterators pulled into lists and everything past `max_items` items (or
    `max_chars` characters of strings) left out, and the number of items it was cut at (None: whole).

    Items are the members of dicts, lists, tuples, sets and iterators, at any depth; the fields of
    models and dataclasses are walked too (a copy made when one changed). A list too long keeps its
    head and tail items, with a line between. What is nested deeper than 200 levels is replaced by a
    note. A value with no iterator and nothing cut is returned as it is. The limits default to what
    an output of the running registry's cap can show (`output_limit`). `stop()` true ends the pulling
    (by default: the call on this pool thread was given up on).
    """
    cap = _output_chars.get()
    walk = _Walk(cap // 2 if max_items is None else max_items, cap if max_chars is None else max_chars, stop)
    bounded = walk.walk(value, 0)
    if walk.cut:
        return bounded, walk.items
    return (bounded if walk.changed else value), None
