"""A tool's return value cut, in Python, to what one output can show, before pydantic-core serialises it.

pydantic-core pulls an iterator (a generator, `itertools.repeat`, a file) whole, in Rust, holding the
GIL: `itertools.repeat(0, 10**7)` stood the event loop still for seconds, an endless iterator ate
memory past every time limit, and a thread given up on inside that Rust code took the process down at
interpreter exit (CPython's unwinding of a daemon thread aborts across Rust frames). Here iterators are
pulled in Python (which lets other threads run), only as far as the output cap can show, and a pull
stops once the call was given up on; pydantic-core gets a value with nothing left to pull.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from qwq_agent.tools.daemon_threads import call_abandoned
from qwq_agent.tools.output_cap import MAX_OUTPUT_CHARS

__all__ = ["MAX_RESULT_CHARS", "MAX_RESULT_ITEMS", "bound_value", "cut_note"]

# Every item takes at least two characters of JSON ("0, "): past this many the text is over the output
# cap, so a value is never cut short of what the cap would have shown of it.
MAX_RESULT_ITEMS = MAX_OUTPUT_CHARS // 2
# Text (the strings' lengths) past which no more items are taken: the cap would cut it anyway.
MAX_RESULT_CHARS = MAX_OUTPUT_CHARS
# Containers deeper than this are left to the serialiser as they are (and its own recursion limit).
_MAX_DEPTH = 200

_SEQUENCES = (list, tuple, set, frozenset, deque)


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
        is_iterator = isinstance(value, Iterator)
        if not (is_iterator or isinstance(value, (dict, *_SEQUENCES))) or depth > _MAX_DEPTH:
            return value  # a model, a dataclass, a number...: the serialiser's, as it is
        if id(value) in self.on_path:
            return value  # a cycle: left for the serialiser to refuse, as it does
        self.on_path.add(id(value))
        try:
            if isinstance(value, dict):
                out: dict[Any, Any] = {}
                for key, item in value.items():
                    if self.full():
                        self.cut = True
                        break
                    if isinstance(key, str):
                        self.chars += len(key)
                    out[key] = self.take(item, depth + 1)
                return out
            if is_iterator:
                self.changed = True
                return self.pulled(value, depth)
            taken = []
            for item in value:
                if self.full():
                    self.cut = True
                    break
                taken.append(self.take(item, depth + 1))
            return taken
        finally:
            self.on_path.discard(id(value))

    def pulled(self, iterator: Iterator[Any], depth: int) -> list[Any]:
        taken = []
        for item in iterator:
            if self.stop():  # given up on: nobody will read the output
                self.cut = True
                break
            if self.full():
                self.cut = True  # one item past the cap, so an iterator that fits exactly is not "cut"
                break
            taken.append(self.take(item, depth + 1))
        return taken


def bound_value(
    value: Any,
    *,
    max_items: int = MAX_RESULT_ITEMS,
    max_chars: int = MAX_RESULT_CHARS,
    stop: Callable[[], bool] = call_abandoned,
) -> tuple[Any, int | None]:
    """`value` with its iterators pulled into lists and everything past `max_items` items (or
    `max_chars` characters of strings) left out, and the number of items it was cut at (None: whole).

    Items are the members of dicts, lists, tuples, sets and iterators, at any depth; other objects
    (models, dataclasses) count as one. A value with no iterator and nothing cut is returned as it is.
    `stop()` true ends the pulling (by default: the call on this pool thread was given up on).
    """
    walk = _Walk(max_items, max_chars, stop)
    copy = walk.walk(value, 0)
    if walk.cut:
        return copy, walk.items
    return (copy if walk.changed else value), None
