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
