"""A first-in first-out queue of reply slots, for the per-request path.

``collections.deque`` does the same job, but compiled code (see setup.py) can only reach a
deque's methods through attribute lookups; this class's methods are direct calls there. A list
and a head index: popping advances the index, and the popped front of the list is dropped when
the queue empties, or once it is at least 1024 items and half the list. Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Fifo(Generic[T]):
    """append at the back, ``head()`` / ``popleft()`` at the front, ``len()``, iteration."""

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._head = 0  # index of the front item in _items

    def __len__(self) -> int:
        return len(self._items) - self._head

    def __bool__(self) -> bool:
        return len(self._items) > self._head

    def __iter__(self) -> Iterator[T]:
        return iter(self._items[self._head :])

    def append(self, item: T) -> None:
        self._items.append(item)

    def head(self) -> T:
        """The front item (IndexError when empty)."""
        if self._head >= len(self._items):
            raise IndexError("head of an empty Fifo")
        return self._items[self._head]

    def popleft(self) -> T:
        """Remove and return the front item (IndexError when empty)."""
        items = self._items
        h = self._head
        if h >= len(items):
            raise IndexError("pop from an empty Fifo")
        item = items[h]
        h += 1
        if h == len(items):
            items.clear()
            h = 0
        elif h >= 1024 and 2 * h >= len(items):
            del items[:h]
            h = 0
        self._head = h
        return item

    def insert_before(self, target: T, item: T) -> None:
        """Put ``item`` just before ``target`` (found by identity), or at the back when
        ``target`` is not queued. A scan: for the rare out-of-band item, never per request."""
        items = self._items
        for i in range(self._head, len(items)):
            if items[i] is target:
                items.insert(i, item)
                return
        items.append(item)

    def clear(self) -> None:
        self._items.clear()
        self._head = 0
