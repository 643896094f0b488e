"""What the host knows about a sandbox beside the sandbox object: its baseline, the folder it came from.

Held weakly (a fact goes when its sandbox does) and handed from a parent to the sandboxes restored from
its snapshot, which hold the same start.
"""

from __future__ import annotations

import weakref
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PerSandbox(Generic[T]):
    """One kind of fact per sandbox."""

    def __init__(self) -> None:
        self._facts: weakref.WeakKeyDictionary[Any, T] = weakref.WeakKeyDictionary()

    def get(self, sandbox: Any) -> T | None:
        """The fact recorded for `sandbox`, or None when none was."""
        try:
            return self._facts.get(sandbox)
        except TypeError:  # an object that cannot be weakly referenced never had one
            return None

    def set(self, sandbox: Any, fact: T) -> None:
        """Record `fact` for `sandbox`."""
        self._facts[sandbox] = fact

    def inherit(self, sandbox: Any, parent: Any) -> None:
        """Give `sandbox` the fact of `parent` (whose snapshot it holds), if it has one."""
        fact = self.get(parent)
        if fact is not None:
            self._facts[sandbox] = fact
