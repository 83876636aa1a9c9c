"""The topology file: YAML -> frozen dataclasses, with every default and rule in one place.

The dataclasses below *are* the schema. Each field that can appear in the file declares, once,
its default and, in its ``metadata``, the kind of value it takes and what it means. Everything
else is derived from them:

* :func:`parse` walks the dataclasses to validate a loaded YAML document and build a
  :class:`Config`; it collects every problem before raising :class:`ConfigError`, each as
  ``key.path: problem`` (``shards[1].primary: ...``, ``limits.foo: unknown key``);
* :func:`reference_markdown` renders the README's topology reference (key, type, default,
  meaning) from the same fields;
* :func:`changed_settings` compares two configs key by key (``shardproxy diff``, reload logs).

A field is a YAML key when its metadata has ``kind`` (a leaf value), ``section`` (a nested
mapping, built as that dataclass) or ``sections`` (a list of such mappings). A field without a
default is required. The generic machinery (value kinds, the walk, the derived views) is in
:mod:`shardproxy.schema`; this module holds shardproxy's own keys, the value kinds only it
needs (addresses, hash tags, lag limits) and the rules that span several keys
(:func:`_cross_checks`: shard names unique, a node in one place only, ...).

Nothing here does I/O except :func:`load`, and nothing imports asyncio.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from shardproxy.hashing import HASH_FUNCTIONS
from shardproxy.ring import DISTRIBUTIONS as RING_DISTRIBUTIONS
from shardproxy.schema import (
    BOOL,
    NAME,
    NON_NEGATIVE_INT,
    OPTIONAL_STRING,
    POSITIVE_INT,
    SIZE,
    _bad,
    _build,
    _choice,
    _Invalid,
    _key,
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
from shardproxy.schema import changed_settings as _changed_settings
from shardproxy.schema import reference_markdown as _reference_markdown

# --- value names the file accepts -------------------------------------------------------------

#: Hash functions, twemproxy's set, as :mod:`shardproxy.hashing` declares them.
HASH_FUNCTION_NAMES: tuple[str, ...] = tuple(HASH_FUNCTIONS)
#: Key distributions, as :mod:`shardproxy.ring` declares them.
DISTRIBUTIONS: tuple[str, ...] = tuple(RING_DISTRIBUTIONS)
#: Where reads go: ``primary`` always; ``prefer-replica`` a healthy replica, else the primary;
#: ``replica`` a healthy replica or an error.
READ_POLICIES: tuple[str, ...] = ("primary", "prefer-replica", "replica")


class ConfigError(Exception):
    """The topology is invalid. ``problems`` lists every problem, each ``key.path: problem``."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        #: The file the problems were found in, or None when parsing data that came from elsewhere.
        self.source = source


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


# --- the schema: one dataclass per section ------------------------------------------------------


@dataclass(frozen=True)
class HashConfig:
    """How a key picks its shard."""

    function: str = field(
        default="fnv1a_64", metadata=_key(HASH_FUNCTION, "hash function applied to the key")
    )
    distribution: str = field(
        default="ketama",
        metadata=_key(
            DISTRIBUTION,
            "`ketama`: consistent hashing, nutcracker-compatible; "
            "`modula`: hash modulo the total weight",
        ),
    )
    tag: str = field(
        default="{}",
        metadata=_key(
            TAG, 'hash tag delimiters: only the part between them is hashed; `""` disables tags'
        ),
    )


@dataclass(frozen=True, kw_only=True)
class ShardConfig:
    """One shard: a primary and its replicas, placed on the ring by ``name`` and ``weight``."""

    name: str = field(
        metadata=_key(NAME, "stable identity of the shard on the ring (never its address)")
    )
    weight: int = field(default=1, metadata=_key(POSITIVE_INT, "relative share of the keyspace"))
    primary: Address = field(metadata=_key(NODE, "the node that takes writes"))
    replicas: tuple[Address, ...] = field(
        default=(), metadata=_key(NODES, "nodes that may serve reads, per `read_policy`")
    )
    sentinel_name: str | None = field(
        default=None,
        metadata=_key(
            OPTIONAL_STRING,
            "master name in Sentinel (`failover.mode: sentinel`); null: the shard name",
        ),
    )

    @property
    def nodes(self) -> tuple[Address, ...]:
        """Primary first, then the replicas."""
        return (self.primary, *self.replicas)


@dataclass(frozen=True)
class TimeoutsConfig:
    """How long the proxy waits on backends."""

    connect_ms: int = field(
        default=1000, metadata=_key(POSITIVE_INT, "opening a connection to a backend node")
    )
    command_ms: int = field(
        default=1000,
        metadata=_key(POSITIVE_INT, "a reply from a backend node before the client gets an error"),
    )


@dataclass(frozen=True)
class BackendConfig:
    """Connections from the proxy to every node."""

    connections: int = field(
        default=1,
        metadata=_key(POSITIVE_INT, "connections to each node, per worker; requests are pipelined"),
    )
    username: str | None = field(
        default=None, metadata=_key(OPTIONAL_STRING, "ACL user for AUTH on backend connections")
    )
    password: str | None = field(
        default=None,
        metadata=_key(
            OPTIONAL_STRING, "password for AUTH on backend connections; null: no AUTH", secret=True
        ),
    )


@dataclass(frozen=True)
class LimitsConfig:
    """Per-client and per-process limits."""

    max_pending_per_client: int = field(
        default=1024,
        metadata=_key(
            POSITIVE_INT, "requests a client may have outstanding before the proxy stops reading it"
        ),
    )
    max_request_bytes: int = field(
        default=512 * 1024**2,
        metadata=_key(SIZE, "largest request frame; a larger one is a protocol error"),
    )
    max_inline_bytes: int = field(
        default=64 * 1024, metadata=_key(SIZE, "longest inline (telnet-style) command line")
    )
    max_clients: int = field(
        default=10000, metadata=_key(POSITIVE_INT, "client connections per worker")
    )


@dataclass(frozen=True)
class ShutdownConfig:
    """What happens on SIGTERM/SIGINT."""

    drain_timeout_ms: int = field(
        default=5000,
        metadata=_key(
            NON_NEGATIVE_INT, "how long in-flight requests may finish before connections close"
        ),
    )


@dataclass(frozen=True)
class HealthConfig:
    """Probes of every node (PING, then INFO replication)."""

    interval_ms: int = field(
        default=1000, metadata=_key(POSITIVE_INT, "time between probes of a node")
    )
    timeout_ms: int = field(
        default=500, metadata=_key(POSITIVE_INT, "a probe that takes longer fails")
    )
    failures: int = field(
        default=3,
        metadata=_key(
            POSITIVE_INT, "consecutive failed probes or live-traffic failures that mark a node down"
        ),
    )
    successes: int = field(
        default=2,
        metadata=_key(POSITIVE_INT, "consecutive good probes that mark a down node up again"),
    )


@dataclass(frozen=True)
class FailoverConfig:
    """What happens when a shard's primary is down."""

    mode: str = field(
        default="none",
        metadata=_key(
            FAILOVER_MODE,
            "`none`: errors naming the shard until the primary returns; `promote`: the proxy "
            "promotes the most up-to-date replica; `sentinel`: follow Redis Sentinel; `eject`: "
            "the shard leaves the ring while it has no usable node (caches only: keys move)",
        ),
    )


@dataclass(frozen=True)
class SentinelConfig:
    """Redis Sentinel, for `failover.mode: sentinel`."""

    addresses: tuple[Address, ...] = field(
        default=(), metadata=_key(NODES, "Sentinel nodes to ask and subscribe to")
    )
    poll_interval_ms: int = field(
        default=5000,
        metadata=_key(
            POSITIVE_INT,
            "how often every shard's primary is asked for, besides the +switch-master subscription",
        ),
    )
    password: str | None = field(
        default=None,
        metadata=_key(OPTIONAL_STRING, "password for the Sentinels; null: none", secret=True),
    )


MIGRATION_COPY = _choice("copy mode", ("none", "background"))


@dataclass(frozen=True)
class ReloadConfig:
    """Applying an edited topology file without a restart (SIGHUP and POST /reload always work)."""

    watch: bool = field(
        default=False,
        metadata=_key(BOOL, "also reload when the file's contents change (checked every second)"),
    )


@dataclass(frozen=True)
class MigrationConfig:
    """Moving keys when a reload changes which shard owns them."""

    window_s: int = field(
        default=300,
        metadata=_key(
            NON_NEGATIVE_INT,
            "after a reload moves keys, a key missing on its new shard is looked up on its "
            "previous shard and moved over, for this long (and until the background copy ends); "
            "0 disables",
        ),
    )
    copy: str = field(
        default="none",
        metadata=_key(
            MIGRATION_COPY,
            "`background`: also scan the previous owners and move the keys that changed shard, "
            "so the window can close early; `none`: move keys only when they are used",
        ),
    )
    rate: int = field(
        default=5000,
        metadata=_key(POSITIVE_INT, "keys per second the background copy moves at most"),
    )


@dataclass(frozen=True)
class MetricsConfig:
    """What the proxy counts for /metrics and INFO."""

    commands: bool = field(
        default=True,
        metadata=_key(
            BOOL,
            "count every command and its latency (per command and per backend); "
            "false saves a little CPU per request",
        ),
    )


@dataclass(frozen=True, kw_only=True)
class Config:
    """A validated topology. Built by :func:`parse`/:func:`load`; immutable, so a reload builds a
    new one and swaps it in whole."""

    listen: tuple[Address, ...] = field(
        default=(Address("127.0.0.1", 6380),),
        metadata=_key(LISTENERS, 'RESP listener(s): "host:port", "[::1]:port" or "unix:/path"'),
    )
    admin: Address | None = field(
        default=Address("127.0.0.1", 9121),
        metadata=_key(ADMIN, "HTTP admin listener (/metrics, /healthz, /readyz, /topology)"),
    )
    hash: HashConfig = field(default_factory=HashConfig, metadata={"section": HashConfig})
    read_policy: str = field(
        default="primary",
        metadata=_key(
            READ_POLICY,
            "where reads go: `primary`; `prefer-replica` (a healthy replica, else the primary); "
            "`replica` (a healthy replica, else an error)",
        ),
    )
    shards: tuple[ShardConfig, ...] = field(metadata={"sections": ShardConfig})
    max_replica_lag: LagLimit = field(
        default=LagLimit(1024 * 1024, "bytes"),
        metadata=_key(LAG, "a replica further behind its primary serves no reads"),
    )
    read_your_writes_ms: int = field(
        default=1000,
        metadata=_key(
            NON_NEGATIVE_INT,
            "after a client writes to a shard, its reads of that shard go to the primary for "
            "this long; 0 disables",
        ),
    )
    health: HealthConfig = field(default_factory=HealthConfig, metadata={"section": HealthConfig})
    failover: FailoverConfig = field(
        default_factory=FailoverConfig, metadata={"section": FailoverConfig}
    )
    sentinel: SentinelConfig = field(
        default_factory=SentinelConfig, metadata={"section": SentinelConfig}
    )
    timeouts: TimeoutsConfig = field(
        default_factory=TimeoutsConfig, metadata={"section": TimeoutsConfig}
    )
    backend: BackendConfig = field(
        default_factory=BackendConfig, metadata={"section": BackendConfig}
    )
    limits: LimitsConfig = field(default_factory=LimitsConfig, metadata={"section": LimitsConfig})
    shutdown: ShutdownConfig = field(
        default_factory=ShutdownConfig, metadata={"section": ShutdownConfig}
    )
    workers: int = field(
        default=1,
        metadata=_key(
            POSITIVE_INT,
            "worker processes sharing the listen port (SO_REUSEPORT) under a supervisor that "
            "restarts a worker that dies; `--workers` overrides it",
        ),
    )
    reload: ReloadConfig = field(default_factory=ReloadConfig, metadata={"section": ReloadConfig})
    migration: MigrationConfig = field(
        default_factory=MigrationConfig, metadata={"section": MigrationConfig}
    )
    metrics: MetricsConfig = field(
        default_factory=MetricsConfig, metadata={"section": MetricsConfig}
    )
    deny_commands: frozenset[str] = field(
        default=frozenset(),
        metadata=_key(COMMAND_NAMES, "commands refused with an error (any case)"),
    )
    #: The file this was loaded from; None when parsed from data. Not a YAML key.
    source: str | None = None

    def shard(self, name: str) -> ShardConfig:
        """The shard called ``name`` (KeyError if there is none)."""
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)


# --- parsing and loading ------------------------------------------------------------------------


def _cross_checks(data: Mapping[Any, Any], problems: list[str]) -> None:
    """Rules spanning several keys, checked on the raw data so they add to the other problems."""
    shards = data.get("shards")
    if shards == []:
        problems.append("shards: must list at least one shard")
    if not isinstance(shards, list):
        shards = []
    names: dict[str, int] = {}
    nodes: dict[Address, str] = {}
    for i, shard in enumerate(shards):
        if not isinstance(shard, Mapping):
            continue
        name = shard.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(f"shards[{i}].name: duplicate shard name {name!r}")
            names.setdefault(name, i)
        listed: list[tuple[str, object]] = [(f"shards[{i}].primary", shard.get("primary"))]
        replicas = shard.get("replicas")
        if isinstance(replicas, list):
            listed += [(f"shards[{i}].replicas[{j}]", r) for j, r in enumerate(replicas)]
        for where, text in listed:
            address = _parsed(text)
            if address is None:
                continue
            if address in nodes:
                problems.append(f"{where}: node {address} is already listed at {nodes[address]}")
            else:
                nodes[address] = where
    listen = data.get("listen", LISTENERS.display(Config.__dataclass_fields__["listen"].default))
    listeners = [("listen", listen)] if isinstance(listen, str) else []
    if isinstance(listen, list):
        listeners = [(f"listen[{i}]", text) for i, text in enumerate(listen)]
    seen: dict[Address, str] = {}
    for where, text in listeners:
        address = _parsed(text)
        if address is None:
            continue
        if address in nodes:
            problems.append(f"{where}: {address} is also a backend node ({nodes[address]})")
        if address in seen:
            problems.append(f"{where}: {address} is already listed at {seen[address]}")
        seen.setdefault(address, where)
    admin = _parsed(data.get("admin"))
    if admin is not None and admin in seen:
        problems.append(f"admin: {admin} is also a RESP listener ({seen[admin]})")
    backend = data.get("backend")
    if isinstance(backend, Mapping) and backend.get("username") and not backend.get("password"):
        problems.append("backend.username: needs backend.password as well")
    failover = data.get("failover")
    sentinel = data.get("sentinel")
    if isinstance(failover, Mapping) and failover.get("mode") == "sentinel":
        if not isinstance(sentinel, Mapping) or not sentinel.get("addresses"):
            problems.append("sentinel.addresses: failover.mode sentinel needs at least one address")


def _parsed(text: object) -> Address | None:
    if not isinstance(text, str):
        return None
    try:
        return Address.parse(text)
    except ValueError:
        return None


def parse(data: object, source: str | None = None) -> Config:
    """Validate a loaded YAML document and build the :class:`Config`.

    Raises :class:`ConfigError` listing every problem found, each with its key path.
    """
    problems: list[str] = []
    config = _build(Config, data, "", problems)
    if isinstance(data, Mapping):
        _cross_checks(data, problems)
    if problems or config is None:
        raise ConfigError(problems, source)
    return dataclasses.replace(config, source=source)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key; construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load(path: str) -> Config:
    """Read and :func:`parse` the topology file at ``path``.

    An unreadable file or invalid YAML is a :class:`ConfigError` too, its problem prefixed with
    the path (and ``:line:column`` for YAML errors).
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"], path) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = path
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}:{mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{where}: invalid YAML: {problem}"], path) from None
    return parse(data, source=path)


# --- derived views ------------------------------------------------------------------------------


def reference_markdown() -> str:
    """The README's topology reference: one row per key with its type, default and meaning."""
    return _reference_markdown(Config)


def changed_settings(old: Config, new: Config) -> list[tuple[str, str, str]]:
    """(key path, old, new) for every setting outside ``shards`` that differs, values shown in
    YAML form. Secrets show as ``(hidden)`` but are still compared."""
    return _changed_settings(Config, old, new)
