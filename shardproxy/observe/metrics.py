"""The metric table, and the cheap counters behind it.

Every metric the proxy exports is one row of :data:`METRICS` (name, type, labels, help). The
Prometheus exposition, ``shardproxy metrics`` and the README's metric reference are derived
from it, and a test checks that every row is actually exported.

The hot path never touches prometheus-client. It bumps plain integers and lists
(:class:`CommandCounters`, :class:`Histogram`, attributes of nodes and the process's Stats);
at scrape time a :class:`Collector` asks a :class:`Source` (the proxy, app.proxy) for the current
values and turns them into metric families. Label sets are bounded by the command table and
the topology, never by keys or clients.

A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector as _PromCollector

PREFIX = "shardproxy_"


@dataclass(frozen=True)
class MetricDef:
    name: str  # full name, with the shardproxy_ prefix (and _total for counters)
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str
    #: How the supervisor combines the values of several worker processes (supervisor.py):
    #: "sum" (counters and histograms always; gauges that count things) or "max" (gauges that
    #: are a state or a level, where adding the workers' views would be wrong).
    merge: str

    def __post_init__(self) -> None:
        if not self.name.startswith(PREFIX):
            raise ValueError(f"{self.name}: every metric is named {PREFIX}...")
        if self.merge not in ("sum", "max") or (self.merge == "max" and self.type != "gauge"):
            raise ValueError(f"{self.name}: merge must be sum, or max for a gauge")


# fmt: off
METRICS: tuple[MetricDef, ...] = (
    MetricDef("shardproxy_build_info", "gauge", ("version", "python"), "Always 1; the labels say which build runs.", "max"),
    MetricDef("shardproxy_client_connections", "gauge", (), "Client connections open now.", "sum"),
    MetricDef("shardproxy_client_connections_accepted_total", "counter", (), "Client connections accepted.", "sum"),
    MetricDef("shardproxy_client_connections_rejected_total", "counter", (), "Client connections refused (limits.max_clients reached, or draining).", "sum"),
    MetricDef("shardproxy_client_received_bytes_total", "counter", (), "Bytes read from clients.", "sum"),
    MetricDef("shardproxy_client_sent_bytes_total", "counter", (), "Bytes written to clients.", "sum"),
    MetricDef("shardproxy_commands_total", "counter", ("command", "status"), "Commands answered, by command and by whether the reply was an error.", "sum"),
    MetricDef("shardproxy_command_duration_seconds", "histogram", ("command",), "Time from reading a command to its reply being ready to write, by command.", "sum"),
    MetricDef("shardproxy_backend_requests_total", "counter", ("shard", "node", "role"), "Requests sent to each backend node.", "sum"),
    MetricDef("shardproxy_backend_request_duration_seconds", "histogram", ("shard", "role"), "Time from sending a request to a node to its reply, by shard and role.", "sum"),
    MetricDef("shardproxy_backend_errors_total", "counter", ("shard", "node", "type"), "Backend connection failures by type: timeout, connection, protocol.", "sum"),
    MetricDef("shardproxy_backend_pending_requests", "gauge", ("shard", "node", "role"), "Requests sent to a node and not yet answered.", "sum"),
    MetricDef("shardproxy_backend_up", "gauge", ("shard", "node", "role"), "1 while the node is usable, 0 while it is down.", "max"),
    MetricDef("shardproxy_replica_lag_bytes", "gauge", ("shard", "node"), "Replication offset a replica is behind its primary (from health probes).", "max"),
    MetricDef("shardproxy_failovers_total", "counter", ("shard", "result"), "Failover events of a shard, by result: success or failure (a promotion), adopted (a primary chosen elsewhere, by Sentinel or another worker, followed), ejected or restored (failover.mode eject).", "sum"),
    MetricDef("shardproxy_config_reloads_total", "counter", ("result",), "Topology reloads, by result (success, failure).", "sum"),
    MetricDef("shardproxy_transactions_started_total", "counter", (), "MULTI commands: transactions begun.", "sum"),
    MetricDef("shardproxy_transactions_total", "counter", ("result",), "Transactions ended, by result: committed (EXEC ran), watch_aborted (a watched key changed: EXEC answered null), aborted (a command was refused while queueing, or Redis refused one), cross_shard_refused (aborted because a command's keys lived on another shard), discarded (DISCARD, RESET or the client left), failed (the shard could not run it: no lease free, connection lost, failover).", "sum"),
    MetricDef("shardproxy_backend_leased_connections", "gauge", ("shard", "node", "state"), "Dedicated (leased) connections to a node, by state: in_use (held by a client for a transaction or WATCH) or idle (pooled).", "sum"),
    MetricDef("shardproxy_backend_lease_refusals_total", "counter", ("shard", "node"), "Requests for a dedicated connection turned down because backend.max_leases were open.", "sum"),
    MetricDef("shardproxy_scripts_cached", "gauge", (), "Scripts the proxy remembers (SCRIPT LOAD and EVAL bodies) to reload on a node that answers NOSCRIPT.", "sum"),
    MetricDef("shardproxy_script_cache_bytes", "gauge", (), "Bytes of the scripts the proxy remembers (bounded by scripts.cache_bytes).", "sum"),
    MetricDef("shardproxy_noscript_recoveries_total", "counter", (), "EVALSHA/EVALSHA_RO answered NOSCRIPT by a node and run again there after the proxy loaded the script.", "sum"),
    MetricDef("shardproxy_blocked_clients", "gauge", ("shard",), "Clients waiting for a blocking command's reply (BLPOP, XREAD BLOCK ...), by the shard it runs on.", "sum"),
    MetricDef("shardproxy_blocking_commands_total", "counter", (), "Blocking commands started.", "sum"),
    MetricDef("shardproxy_blocks_reissued_total", "counter", (), "Blocking commands sent again, with the time left, after their connection failed (a failover, a node restart) or a reload moved their keys, counted once the node they were sent to has them.", "sum"),
    MetricDef("shardproxy_block_replies_orphaned_total", "counter", (), "Replies of a blocking command read after its client had left (the element was popped as the client disconnected; each is logged with its key).", "sum"),
    MetricDef("shardproxy_auth_failures_total", "counter", (), "AUTH and HELLO AUTH refused (-WRONGPASS: unknown user, wrong password, user off); each is logged with the user name and the client's address, never the password.", "sum"),
    MetricDef("shardproxy_client_disconnects_total", "counter", ("reason",), "Clients the proxy disconnected, by reason: unread (more than limits.max_unread_bytes of replies waiting for a client that does not read), idle (limits.client_idle_timeout_s), user_removed (a reload removed or disabled its user).", "sum"),
    MetricDef("shardproxy_cache_requests_total", "counter", ("result",), "GETs of cacheable keys, by result: hit (answered from the near-cache) or miss (sent to the node, and kept if admitted).", "sum"),
    MetricDef("shardproxy_cache_entries", "gauge", (), "Keys in the near-cache.", "sum"),
    MetricDef("shardproxy_cache_bytes", "gauge", (), "Bytes the near-cache holds (keys, values and per-entry bookkeeping; bounded by cache.max_memory).", "sum"),
    MetricDef("shardproxy_cache_invalidations_total", "counter", (), "Keys the nodes said changed (client tracking), each dropped from the near-cache.", "sum"),
    MetricDef("shardproxy_cache_evictions_total", "counter", (), "Near-cache entries evicted to stay within cache.max_memory.", "sum"),
    MetricDef("shardproxy_hotkeys_top_share", "gauge", ("shard",), "Share of a shard's single-key requests (sampled) that go to its 10 hottest keys: near 1, a few keys dominate it (GET /hotkeys names them).", "max"),
    MetricDef("shardproxy_pubsub_channels", "gauge", ("type",), "Channels with at least one subscribed client, by type: channel (SUBSCRIBE), pattern (PSUBSCRIBE), shard (SSUBSCRIBE).", "sum"),
    MetricDef("shardproxy_pubsub_clients", "gauge", (), "Clients with at least one pub/sub subscription.", "sum"),
    MetricDef("shardproxy_pubsub_messages_total", "counter", (), "Pub/sub messages delivered to clients (a message reaching three clients counts three).", "sum"),
    MetricDef("shardproxy_pubsub_slow_disconnects_total", "counter", (), "Subscribed clients disconnected because their unread messages passed pubsub.output_hard_limit (or output_soft_limit for output_soft_seconds).", "sum"),
    MetricDef("shardproxy_pubsub_upstream_connections", "gauge", ("shard", "node"), "The proxy's own subscriber connections to each shard's primary that are up (shared by every subscribed client).", "sum"),
    MetricDef("shardproxy_backend_lease_limit", "gauge", ("shard", "node"), "backend.max_leases: the dedicated connections a node may have open per worker.", "max"),
    MetricDef("shardproxy_migration_active", "gauge", (), "1 while keys that a reload moved to another shard are being moved.", "max"),
    MetricDef("shardproxy_migration_keys_moved_total", "counter", ("how",), "Keys moved to their new shard during the last migration: on access (a miss served from the previous owner) or by the background copy.", "sum"),
)
# fmt: on

BY_NAME = {m.name: m for m in METRICS}

#: Latency buckets in seconds: 50 µs to 2.5 s (a proxy's interesting range is the low end).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Histogram:
    """Flat bucket counts for ``series`` label sets; ``observe`` finds the bucket, two adds."""

    __slots__ = ("bounds", "counts", "nb", "sums")

    def __init__(self, series: int, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.nb = len(self.bounds) + 1  # + the +Inf bucket
        self.counts = [0] * (series * self.nb)  # counts[series * nb + bucket], not cumulative
        self.sums = [0.0] * series

    def bucket(self, value: float) -> int:
        """Index of the bucket ``value`` falls in (bisect_left over the bounds; a linear scan,
        since most values fall in the first buckets and compiled it is a few compares)."""
        i = 0
        for bound in self.bounds:
            if value <= bound:
                return i
            i += 1
        return i

    def observe(self, series: int, value: float) -> None:
        self.counts[series * self.nb + self.bucket(value)] += 1
        self.sums[series] += value

    def observe_many(self, series: int, value: float, n: int) -> None:
        """``n`` observations of the same ``value``."""
        self.counts[series * self.nb + self.bucket(value)] += n
        self.sums[series] += value * n

    def grow(self, series: int) -> None:
        """Make room for at least ``series`` label sets."""
        missing = series - len(self.sums)
        if missing > 0:
            self.counts.extend([0] * (missing * self.nb))
            self.sums.extend([0.0] * missing)

    def buckets(self, series: int) -> tuple[list[tuple[str, float]], float, int]:
        """Cumulative (le, count) pairs as Prometheus wants them, the sum, and the count."""
        base = series * self.nb
        acc = 0
        out = []
        for i, bound in enumerate(self.bounds):
            acc += self.counts[base + i]
            out.append((repr(bound), float(acc)))
        acc += self.counts[base + len(self.bounds)]
        out.append(("+Inf", float(acc)))
        return out, self.sums[series], acc


TRANSACTION_RESULTS = (
    "committed", "watch_aborted", "aborted", "cross_shard_refused", "discarded", "failed",
)  # fmt: skip


class Stats:
    """Plain counters bumped on the hot path and read by INFO and /metrics."""

    __slots__ = (
        "auth_failures",
        "block_replies_orphaned",
        "blocks",
        "blocks_reissued",
        "bytes_in",
        "bytes_out",
        "client_disconnects",
        "commands",
        "connections_received",
        "connections_rejected",
        "failovers",
        "noscript_recoveries",
        "pubsub_messages",
        "pubsub_slow_disconnects",
        "reloads",
        "transactions",
        "transactions_started",
    )

    def __init__(self) -> None:
        self.commands = 0  # requests parsed
        self.connections_received = 0
        self.connections_rejected = 0
        self.bytes_in = 0  # from clients
        self.bytes_out = 0  # to clients
        # (shard, result) -> count; results as shardproxy_failovers_total's help says
        self.failovers: dict[tuple[str, str], int] = {}
        self.reloads = {"success": 0, "failure": 0}
        self.transactions_started = 0  # MULTI
        # how transactions ended (shardproxy_transactions_total's help says each)
        self.transactions: dict[str, int] = dict.fromkeys(TRANSACTION_RESULTS, 0)
        self.noscript_recoveries = 0  # -NOSCRIPT answered by loading the script, then retrying
        self.blocks = 0  # blocking commands sent (BLPOP ...)
        self.blocks_reissued = 0  # sent again after a failover, a node's return or a reload
        self.block_replies_orphaned = 0  # replies read for a blocked client that had left
        self.auth_failures = 0  # AUTH / HELLO AUTH refused (-WRONGPASS)
        # clients the proxy dropped: unread (limits.max_unread_bytes), idle
        # (limits.client_idle_timeout_s), user_removed (a reload removed or disabled the user)
        self.client_disconnects = {"unread": 0, "idle": 0, "user_removed": 0}
        self.pubsub_messages = 0  # pub/sub messages delivered to clients (one per client)
        self.pubsub_slow_disconnects = 0  # subscribers dropped over pubsub.output_*_limit

    def count_transaction(self, result: str) -> None:
        self.transactions[result] += 1


class CommandCounters:
    """Per-command latency and error counts, indexed by the command table. The histogram's
    count is the number of replies; ``errors`` counts those that were errors."""

    __slots__ = ("errors", "latency")

    def __init__(self, commands: int) -> None:
        self.errors = [0] * commands
        self.latency = Histogram(commands)

    def calls(self, index: int) -> tuple[int, int]:
        """(ok, error) replies of command ``index``."""
        nb = self.latency.nb
        total = sum(self.latency.counts[index * nb : (index + 1) * nb])
        return total - self.errors[index], self.errors[index]


@dataclass
class Sample:
    labels: tuple[str, ...]
    value: float


@dataclass
class HistogramSample:
    labels: tuple[str, ...]
    buckets: list[tuple[str, float]]
    sum: float


class Source(Protocol):
    """Who knows the current values (the proxy, app.proxy): metric name -> samples."""

    def metric_samples(self) -> dict[str, list[Sample] | list[HistogramSample]]: ...


class Collector(_PromCollector):
    """A prometheus-client collector that reads the plain counters at scrape time."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        samples = self.source.metric_samples()
        for m in METRICS:
            yield from _family(m, samples.get(m.name, []))

    def describe(self) -> Iterable[Metric]:
        return []


def _family(
    m: MetricDef, samples: Sequence[Sample] | Sequence[HistogramSample]
) -> Iterator[Metric]:
    base = m.name.removesuffix("_total") if m.type == "counter" else m.name
    fam: Metric
    if m.type == "counter":
        fam = CounterMetricFamily(base, m.help, labels=m.labels)
        for s in samples:
            assert isinstance(s, Sample)
            fam.add_metric(list(s.labels), s.value)
    elif m.type == "gauge":
        fam = GaugeMetricFamily(base, m.help, labels=m.labels)
        for s in samples:
            assert isinstance(s, Sample)
            fam.add_metric(list(s.labels), s.value)
    else:
        fam = HistogramMetricFamily(base, m.help, labels=m.labels)
        for s in samples:
            assert isinstance(s, HistogramSample)
            fam.add_metric(list(s.labels), s.buckets, s.sum)
    yield fam


def markdown_table() -> str:
    """The README's metric reference."""
    rows = ["| metric | type | labels | meaning |", "| --- | --- | --- | --- |"]
    for m in METRICS:
        labels = ", ".join(m.labels) or "-"
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help} |")
    return "\n".join(rows)


def text_table() -> str:
    """``shardproxy metrics``: the table for a terminal."""
    width = max(len(m.name) for m in METRICS)
    lines = []
    for m in METRICS:
        labels = "{" + ",".join(m.labels) + "}" if m.labels else ""
        lines.append(f"{m.name.ljust(width)}  {m.type:<9}  {labels}\n    {m.help}")
    return "\n".join(lines)
