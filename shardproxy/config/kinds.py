"""shardproxy's own value kinds: the values the topology file accepts beyond the generic ones.

This module owns the value types that appear in a :class:`~shardproxy.config.model.Config`
(:class:`Address`, :class:`LagLimit`), the names the file accepts (hash functions, distributions,
read policies, failover modes), the parsers of shardproxy-specific values (hash tags, node and
listener addresses, the admin listener, command names, lag limits) and the :class:`_Kind`
instances built from them, which the section dataclasses in :mod:`shardproxy.config.model` name
in their field metadata. The generic kinds (integers, sizes, names, booleans) and the machinery
are in :mod:`shardproxy.config.schema`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardproxy.config.schema import (
    _bad,
    _choice,
    _Invalid,
    _Kind,
    _list,
    _name,
    _show,
    _show_list,
    _show_size,
    _show_string,
    _size,
    _string,
)
from shardproxy.routing.hashing import HASH_FUNCTIONS
from shardproxy.routing.ring import DISTRIBUTIONS as RING_DISTRIBUTIONS

# --- value names the file accepts -------------------------------------------------------------

#: Hash functions, twemproxy's set, as :mod:`shardproxy.routing.hashing` declares them.
HASH_FUNCTION_NAMES: tuple[str, ...] = tuple(HASH_FUNCTIONS)
#: Key distributions, as :mod:`shardproxy.routing.ring` declares them.
DISTRIBUTIONS: tuple[str, ...] = tuple(RING_DISTRIBUTIONS)
#: Where reads go: ``primary`` always; ``prefer-replica`` a healthy replica, else the primary;
#: ``replica`` a healthy replica or an error.
READ_POLICIES: tuple[str, ...] = ("primary", "prefer-replica", "replica")


# --- addresses ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A TCP endpoint (``host``, ``port``) or, when ``unix`` is not None, a unix socket path."""

    host: str = ""
    port: int = 0
    unix: str | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """``host:port``, ``[ipv6]:port`` or ``unix:/path``; ValueError says what is wrong.

        Port 0 is accepted (an ephemeral port for a listener); node addresses are checked for a
        real port by the config rules.
        """
        text = text.strip()
        if text.startswith("unix:"):
            path = text[len("unix:") :]
            if not path:
                raise ValueError("unix socket address needs a path, e.g. unix:/run/shardproxy.sock")
            return cls(unix=path)
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise ValueError(f"bad address {text!r}: expected [ipv6]:port")
            host, port_text = text[1:end], text[end + 2 :]
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"bad address {text!r}: expected host:port or unix:/path")
            if ":" in host:
                raise ValueError(f"bad address {text!r}: write IPv6 hosts in brackets, [::1]:6379")
        if not host:
            raise ValueError(f"bad address {text!r}: missing host")
        if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"bad address {text!r}: port must be a number 0..65535")
        return cls(host=host, port=int(port_text))

    def __str__(self) -> str:
        if self.unix is not None:
            return f"unix:{self.unix}"
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


# --- value kinds of shardproxy's own (the generic ones are in schema.py) -------------------------


def _tag(value: object) -> str:
    text = _string(value)
    if len(text.encode()) not in (0, 2):  # two bytes: the ring compares bytes
        raise _bad(
            f'must be "" (no hash tags) or exactly two ASCII characters such as "{{}}" (got {text!r})'
        )
    return text


def _address(value: object, *, listener: bool) -> Address:
    text = _string(value)
    try:
        address = Address.parse(text)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    if address.unix is None and address.port == 0 and not listener:
        raise _bad(f"bad address {text!r}: port 0 is only allowed for listeners")
    return address


def _node(value: object) -> Address:
    return _address(value, listener=False)


def _listeners(value: object) -> tuple[Address, ...]:
    if isinstance(value, str):
        return (_address(value, listener=True),)
    addresses = _list(value, lambda v: _address(v, listener=True), "addresses")
    if not addresses:
        raise _bad("must name at least one address")
    return addresses


def _admin(value: object) -> Address | None:
    # YAML 1.1 reads a bare `off` as false.
    if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    if value is None:
        raise _bad('write "off" to disable the admin listener')
    return _address(value, listener=True)


def _command_names(value: object) -> frozenset[str]:
    return frozenset(name.lower() for name in _list(value, _name, "command names"))


def _show_addresses(value: tuple[Address, ...]) -> str:
    return str(value[0]) if len(value) == 1 else "[" + ", ".join(map(str, value)) + "]"


TAG = _Kind('"" or two characters', _tag, _show_string)
HASH_FUNCTION = _choice("hash function", HASH_FUNCTION_NAMES)
DISTRIBUTION = _choice("distribution", DISTRIBUTIONS)
READ_POLICY = _choice("read policy", READ_POLICIES)
NODE = _Kind("address", _node)
NODES = _Kind("list of addresses", lambda v: _list(v, _node, "addresses"), _show_list)
LISTENERS = _Kind("address or list of addresses", _listeners, _show_addresses)
ADMIN = _Kind('address or "off"', _admin, lambda v: "off" if v is None else str(v))
COMMAND_NAMES = _Kind("list of command names", _command_names, _show_list)


def _passwords(value: object) -> tuple[str, ...]:
    def one(item: object) -> str:
        if not isinstance(item, str) or not item:
            raise _bad("must be a non-empty string (quote it)")
        if item.startswith("#") and (
            len(item) != 65 or any(c not in "0123456789abcdefABCDEF" for c in item[1:])
        ):
            raise _bad("a password starting with # is a SHA-256: # and 64 hex digits")
        return item

    return _list(value, one, "passwords")


def _globs(value: object) -> tuple[str, ...]:
    return _list(value, _string, "glob patterns")


GLOBS = _Kind("list of glob patterns", _globs, lambda v: "[" + ", ".join(f'"{p}"' for p in v) + "]")
ACL_RULES = _Kind("Redis ACL rules", _string, lambda v: f'"{v}"')
CLIENT_CERTS = _choice("client certificate mode", ("none", "optional", "required"))


def _tls_listeners(value: object) -> tuple[Address, ...]:
    if isinstance(value, str):
        value = [value]
    addresses = _list(value, lambda v: _address(v, listener=True), "addresses")
    for a in addresses:
        if a.unix:
            raise _bad("a TLS listener is host:port (unix sockets are local: use `listen`)")
    return addresses


TLS_LISTENERS = _Kind("address or list of addresses", _tls_listeners, _show_addresses)
PASSWORDS = _Kind(
    "list of passwords (plain, or # and the SHA-256 hex)", _passwords, lambda v: f"({len(v)})"
)


@dataclass(frozen=True)
class LagLimit:
    """How far behind its primary a replica may be and still serve reads: bytes of replication
    offset, or milliseconds since it last heard from its primary (whole seconds in Redis)."""

    amount: int
    unit: str  # "bytes" | "ms"

    def __str__(self) -> str:
        return f"{self.amount}ms" if self.unit == "ms" else _show_size(self.amount)


_LAG_RE = re.compile(r"^\s*(\d+)\s*(ms|s)\s*$", re.IGNORECASE)


def _lag(value: object) -> LagLimit:
    if isinstance(value, str):
        match = _LAG_RE.match(value)
        if match:
            factor = 1000 if match.group(2).lower() == "s" else 1
            return LagLimit(int(match.group(1)) * factor, "ms")
    try:
        return LagLimit(_size(value), "bytes")
    except _Invalid:
        raise _bad(
            f"must be a size in bytes (65536, 1mb) or a time (500ms, 2s) (got {_show(value)})"
        ) from None


LAG = _Kind("bytes (1mb) or time (2s)", _lag, str)
FAILOVER_MODES = ("none", "promote", "sentinel", "eject")
FAILOVER_MODE = _choice("failover mode", FAILOVER_MODES)
MIGRATION_COPY = _choice("copy mode", ("none", "background"))
CROSS_SHARD = _choice("cross-shard transaction mode", ("refuse", "per-shard"))
