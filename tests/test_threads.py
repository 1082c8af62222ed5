"""The AR's read-ahead thread: its items in order, its errors where they are read, and an end
whoever stops it."""

import threading

import pytest

from arlon.pipeline.threads import read_ahead


def drain(items) -> tuple[list, threading.Thread]:
    """`items` read in a thread of their own (a hang fails the test instead of stalling it)."""
    got = []
    reader = threading.Thread(target=lambda: got.extend(items), daemon=True)
    reader.start()
    reader.join(timeout=30)
    return got, reader


def test_read_ahead_gives_the_items_in_order_and_raises_their_error_where_they_are_read():
    def items():
        yield from range(5)
        raise ValueError("drawn badly")

    ahead = read_ahead(items())
    assert [next(ahead) for _ in range(5)] == list(range(5))
    with pytest.raises(ValueError, match="drawn badly"):
        next(ahead)


def test_read_ahead_ends_when_it_is_stopped_from_elsewhere():
    closed = threading.Event()

    def items():  # stopped while drawing its second item, as a generation that stops its AR
        yield 1
        closed.set()
        yield 2

    got, reader = drain(read_ahead(items(), closed=closed))
    assert not reader.is_alive() and got == [1]


def test_closing_a_read_ahead_closes_its_items():
    closed_items = threading.Event()

    def items():
        try:
            yield from range(100)
        finally:
            closed_items.set()

    ahead = read_ahead(items())
    assert next(ahead) == 0
    ahead.close()
    assert closed_items.is_set()
