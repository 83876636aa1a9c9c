"""The topology schema: one frozen dataclass per section of the file, and :class:`Config`.

The dataclasses here *are* the schema. Each field that can appear in the file declares, once,
its default and, in its ``metadata``, the kind of value it takes and what it means. A field is a
YAML key when its metadata has ``kind`` (a leaf value, see :mod:`shardproxy.config.kinds`),
``section`` (a nested mapping, built as that dataclass) or ``sections`` (a list of such
mappings); a field without a default is required.

This module owns those dataclasses (the security sections are in
:mod:`shardproxy.config.security`) and the views derived from them:
:func:`reference_markdown` renders the README's topology reference (key, type, default,
meaning) and :func:`changed_settings` compares two configs key by key (``shardproxy diff``,
reload logs). Building a :class:`Config` from YAML is :mod:`shardproxy.config.load`; the generic
walk both use is :mod:`shardproxy.config.schema`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardproxy.config.kinds import (
    ADMIN,
    COMMAND_NAMES,
    CROSS_SHARD,
    DISTRIBUTION,
    FAILOVER_MODE,
    GLOBS,
    HASH_FUNCTION,
    LAG,
    LISTENERS,
    MIGRATION_COPY,
    NODE,
    NODES,
    READ_POLICY,
    TAG,
    Address,
    LagLimit,
)
from shardproxy.config.schema import (
    BOOL,
    NAME,
    NON_NEGATIVE_INT,
    OPTIONAL_STRING,
    POSITIVE_INT,
    SIZE,
    SIZE_OR_ZERO,
    _key,
)
from shardproxy.config.schema import changed_settings as _changed_settings
from shardproxy.config.schema import reference_markdown as _reference_markdown
from shardproxy.config.security import AuthConfig, BackendTlsConfig, TlsConfig
from shardproxy.routing.ring import Ring

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
    max_leases: int = field(
        default=64,
        metadata=_key(
            POSITIVE_INT,
            "dedicated connections open at once to each node, per worker, for commands that "
            "need a connection of their own (transactions, blocking commands); beyond it such "
            "a command gets -TRYAGAIN",
        ),
    )
    lease_idle_ms: int = field(
        default=30000,
        metadata=_key(POSITIVE_INT, "a dedicated connection unused for this long is closed"),
    )
    tls: BackendTlsConfig = field(
        default_factory=BackendTlsConfig, metadata={"section": BackendTlsConfig}
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
    client_idle_timeout_s: int = field(
        default=0,
        metadata=_key(
            NON_NEGATIVE_INT,
            "close a client idle for this many seconds (not one that is subscribed or blocked); "
            "0: never (Redis's timeout)",
        ),
    )
    max_unread_bytes: int = field(
        default=256 * 1024**2,
        metadata=_key(
            SIZE_OR_ZERO,
            "a client that does not read its replies is disconnected once this many bytes wait "
            "for it (subscribed clients: pubsub.output_*); 0: never",
        ),
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
class TransactionsConfig:
    """MULTI/EXEC whose keys live on more than one shard."""

    cross_shard: str = field(
        default="refuse",
        metadata=_key(
            CROSS_SHARD,
            "`refuse`: a command whose keys live on another shard than the transaction's gets "
            "-CROSSSLOT and EXEC aborts; `per-shard`: each shard's commands run as their own "
            "MULTI/EXEC, atomic per shard but not across shards (README: Transactions)",
        ),
    )


@dataclass(frozen=True)
class ScriptsConfig:
    """The proxy's memory of scripts, to reload them on a node that answers NOSCRIPT."""

    cache_bytes: int = field(
        default=16 * 1024**2,
        metadata=_key(
            SIZE,
            "bytes of script bodies (SCRIPT LOAD, EVAL) kept, least recently used out first; "
            "an EVALSHA a node answers NOSCRIPT is loaded there and run again if its script "
            "is kept",
        ),
    )


@dataclass(frozen=True)
class PubSubConfig:
    """Pub/sub: the proxy's subscriber connections and its limit for slow subscribers."""

    connections: int = field(
        default=1,
        metadata=_key(
            POSITIVE_INT,
            "subscriber connections per shard primary, shared by every subscribed client "
            "(a channel always travels on the same one)",
        ),
    )
    output_hard_limit: int = field(
        default=32 * 1024**2,
        metadata=_key(
            SIZE_OR_ZERO,
            "a subscribed client whose unread messages pass this many bytes is disconnected "
            "(Redis's client-output-buffer-limit pubsub hard limit); 0 disables",
        ),
    )
    output_soft_limit: int = field(
        default=8 * 1024**2,
        metadata=_key(
            SIZE_OR_ZERO,
            "... or that stays above this many bytes for output_soft_seconds; 0 disables",
        ),
    )
    output_soft_seconds: int = field(
        default=60,
        metadata=_key(POSITIVE_INT, "how long a subscribed client may stay above the soft limit"),
    )


@dataclass(frozen=True)
class CacheConfig:
    """The near-cache: GET of the hottest keys answered from the proxy's memory, kept
    coherent by Redis's client tracking (README: Near-cache)."""

    enabled: bool = field(default=False, metadata=_key(BOOL, "turn the near-cache on"))
    keys: tuple[str, ...] = field(
        default=("*",),
        metadata=_key(GLOBS, "glob patterns (Redis syntax) of the keys that may be cached"),
    )
    max_memory: int = field(
        default=64 * 1024**2,
        metadata=_key(SIZE, "bytes of keys, values and bookkeeping the cache may hold"),
    )
    max_age_ms: int = field(
        default=60000,
        metadata=_key(
            POSITIVE_INT,
            "longest an entry is served (a backstop; a key's own TTL is honoured as well)",
        ),
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
    """A validated topology. Built by :func:`~shardproxy.config.loader.parse` and
    :func:`~shardproxy.config.loader.load`; immutable, so a reload builds a new one and swaps it
    in whole."""

    listen: tuple[Address, ...] = field(
        default=(Address("127.0.0.1", 6380),),
        metadata=_key(LISTENERS, 'RESP listener(s): "host:port", "[::1]:port" or "unix:/path"'),
    )
    admin: Address | None = field(
        default=Address("127.0.0.1", 9121),
        metadata=_key(ADMIN, "HTTP admin listener (/metrics, /healthz, /readyz, /topology)"),
    )
    admin_token: str | None = field(
        default=None,
        metadata=_key(
            OPTIONAL_STRING,
            "a bearer token POST /reload must carry (`Authorization: Bearer <token>`)",
            secret=True,
        ),
    )
    admin_token_everywhere: bool = field(
        default=False,
        metadata=_key(BOOL, "require admin_token on every admin path, /metrics included"),
    )
    auth: AuthConfig = field(default_factory=AuthConfig, metadata={"section": AuthConfig})
    tls: TlsConfig = field(default_factory=TlsConfig, metadata={"section": TlsConfig})
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
    transactions: TransactionsConfig = field(
        default_factory=TransactionsConfig, metadata={"section": TransactionsConfig}
    )
    scripts: ScriptsConfig = field(
        default_factory=ScriptsConfig, metadata={"section": ScriptsConfig}
    )
    pubsub: PubSubConfig = field(default_factory=PubSubConfig, metadata={"section": PubSubConfig})
    cache: CacheConfig = field(default_factory=CacheConfig, metadata={"section": CacheConfig})
    deny_commands: frozenset[str] = field(
        default=frozenset(),
        metadata=_key(COMMAND_NAMES, "commands refused with an error (any case)"),
    )
    #: The file this was loaded from; None when parsed from data. Not a YAML key.
    source: str | None = None

    def ring(self, without: frozenset[str] | set[str] = frozenset()) -> Ring:
        """The ring of the shards (less those in ``without``): built from names and weights,
        never addresses, with this topology's hash settings."""
        return Ring.build(
            [(s.name, s.weight) for s in self.shards if s.name not in without],
            function=self.hash.function,
            distribution=self.hash.distribution,
            tag=self.hash.tag,
        )

    def shard(self, name: str) -> ShardConfig:
        """The shard called ``name`` (KeyError if there is none)."""
        for shard in self.shards:
            if shard.name == name:
                return shard
        raise KeyError(name)


# --- derived views ------------------------------------------------------------------------------


def reference_markdown() -> str:
    """The README's topology reference: one row per key with its type, default and meaning."""
    return _reference_markdown(Config)


def changed_settings(old: Config, new: Config) -> list[tuple[str, str, str]]:
    """(key path, old, new) for every setting outside ``shards`` that differs, values shown in
    YAML form. Secrets show as ``(hidden)`` but are still compared."""
    return _changed_settings(Config, old, new)
