"""shardproxy.protocol.fifo against collections.deque, as a model, on random operation sequences."""

from __future__ import annotations

import random
from collections import deque

import pytest

from shardproxy.protocol.fifo import Fifo


@pytest.mark.parametrize("seed", range(20))
def test_fifo_behaves_like_a_deque(seed: int) -> None:
    rng = random.Random(seed)
    fifo: Fifo[int] = Fifo()
    model: deque[int] = deque()
    counter = 0
    for _ in range(5000):
        op = rng.random()
        if op < 0.55 or not model:
            for _ in range(rng.randrange(1, 40)):
                counter += 1
                fifo.append(counter)
                model.append(counter)
        elif op < 0.97:
            for _ in range(min(len(model), rng.randrange(1, 40))):
                assert fifo.head() == model[0]
                assert fifo.popleft() == model.popleft()
        else:
            fifo.clear()
            model.clear()
        assert len(fifo) == len(model)
        assert bool(fifo) == bool(model)
    assert list(fifo) == list(model)


def test_long_backlog_is_compacted() -> None:
    fifo: Fifo[int] = Fifo()
    for i in range(5000):
        fifo.append(i)
    for i in range(3000):
        assert fifo.popleft() == i
    assert len(fifo._items) < 5000  # the popped front was dropped, not kept forever
    assert list(fifo) == list(range(3000, 5000))


def test_empty_fifo_raises() -> None:
    fifo: Fifo[int] = Fifo()
    with pytest.raises(IndexError):
        fifo.head()
    with pytest.raises(IndexError):
        fifo.popleft()
