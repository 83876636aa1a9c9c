"""Frames a server sends without being asked: RESP3 pushes and RESP2 pub/sub messages.

In RESP3 an unsolicited frame has its own type byte (``>``). In RESP2 a pub/sub message is an
ordinary array (``message``, ``pmessage``, ``smessage``), told apart from a reply only by the
connection being subscribed; :func:`is_message` recognises one without decoding it.
"""

from __future__ import annotations

from typing import Final

PUSH: Final = 62  # '>': a RESP3 push frame

_MESSAGE_HEADS: Final = (
    b"*3\r\n$7\r\nmessage\r\n",
    b"*4\r\n$8\r\npmessage\r\n",
    b"*3\r\n$8\r\nsmessage\r\n",
)


def is_push(frame: bytes) -> bool:
    """A RESP3 push frame (pub/sub message, invalidation, ...)."""
    return bool(frame) and frame[0] == PUSH


def is_message(frame: bytes) -> bool:
    """A pub/sub message in either protocol: a RESP3 push, or the RESP2 array shape."""
    if is_push(frame):
        return True
    return frame[:1] == b"*" and frame.startswith(_MESSAGE_HEADS)


# What a RESP2 subscriber connection reads: messages, and the confirmations of its own
# (un)subscribe commands. (A subscriber connection speaks RESP2: the message a client gets is
# then the same bytes, or the same bytes with a push header for a RESP3 client.)
MESSAGE: Final = 0  # message <channel> <payload>
PMESSAGE: Final = 1  # pmessage <pattern> <channel> <payload>
SMESSAGE: Final = 2  # smessage <shard channel> <payload>
CONFIRMATION: Final = 3  # (p|s)(un)subscribe <name> <count>
PONG: Final = 4  # PING's answer on a subscribed connection (or +PONG on an idle one)
OTHER: Final = 5

_KINDS: Final = (
    (b"*3\r\n$7\r\nmessage\r\n", MESSAGE),
    (b"*4\r\n$8\r\npmessage\r\n", PMESSAGE),
    (b"*3\r\n$8\r\nsmessage\r\n", SMESSAGE),
    (b"*3\r\n$9\r\nsubscribe\r\n", CONFIRMATION),
    (b"*3\r\n$11\r\nunsubscribe\r\n", CONFIRMATION),
    (b"*3\r\n$10\r\npsubscribe\r\n", CONFIRMATION),
    (b"*3\r\n$12\r\npunsubscribe\r\n", CONFIRMATION),
    (b"*3\r\n$10\r\nssubscribe\r\n", CONFIRMATION),
    (b"*3\r\n$12\r\nsunsubscribe\r\n", CONFIRMATION),
    (b"*2\r\n$4\r\npong\r\n", PONG),
    (b"+PONG\r\n", PONG),
)


def subscriber_frame(frame: bytes) -> int:
    """What a frame read on a RESP2 subscriber connection is (MESSAGE ... OTHER)."""
    for head, kind in _KINDS:
        if frame.startswith(head):
            return kind
    return OTHER


def message_name(frame: bytes) -> bytes:
    """The channel of a ``message``/``smessage``, the pattern of a ``pmessage``: the first
    bulk string after the kind (the frame is a complete RESP2 array of bulk strings)."""
    start = frame.index(b"\r\n", 4) + 2  # past "*3\r\n$7\r\n"
    start = frame.index(b"\r\n", start) + 2  # past "message\r\n"
    eol = frame.index(b"\r\n", start)  # the end of "$<n>"
    n = int(frame[start + 1 : eol])
    return frame[eol + 2 : eol + 2 + n]


def to_push(frame: bytes) -> bytes:
    """A RESP2 pub/sub array as the RESP3 push frame a RESP3 client gets: same elements."""
    return b">" + frame[1:]
