"""The topology file: YAML -> frozen dataclasses, with every default and rule in one place.

This package's public API; import from here (``from shardproxy.config import Config, load``),
not from the modules below, which depend on each other one way only, in this order:

* :mod:`~shardproxy.config.schema`: the generic engine (value kinds, the walk that builds a
  section dataclass from YAML collecting every problem, the derived reference and diff); it
  knows nothing of shardproxy's keys;
* :mod:`~shardproxy.config.kinds`: shardproxy's own value types and kinds (:class:`Address`,
  :class:`LagLimit`, hash tags, listeners, command names, the accepted names);
* :mod:`~shardproxy.config.model`: the section dataclasses and :class:`Config`, which *are* the
  schema, and the views derived from them (:func:`reference_markdown`, :func:`changed_settings`);
* :mod:`~shardproxy.config.loader`: :class:`ConfigError`, the rules spanning several keys,
  :func:`parse` and :func:`load`.
"""

from shardproxy.config.kinds import (
    DISTRIBUTIONS,
    FAILOVER_MODES,
    HASH_FUNCTION,
    HASH_FUNCTION_NAMES,
    READ_POLICIES,
    Address,
    LagLimit,
)
from shardproxy.config.loader import ConfigError, load, parse
from shardproxy.config.model import (
    BackendConfig,
    Config,
    FailoverConfig,
    HashConfig,
    HealthConfig,
    LimitsConfig,
    MetricsConfig,
    MigrationConfig,
    ReloadConfig,
    SentinelConfig,
    ShardConfig,
    ShutdownConfig,
    TimeoutsConfig,
    changed_settings,
    reference_markdown,
)

__all__ = [
    "DISTRIBUTIONS",
    "FAILOVER_MODES",
    "HASH_FUNCTION",
    "HASH_FUNCTION_NAMES",
    "READ_POLICIES",
    "Address",
    "BackendConfig",
    "Config",
    "ConfigError",
    "FailoverConfig",
    "HashConfig",
    "HealthConfig",
    "LagLimit",
    "LimitsConfig",
    "MetricsConfig",
    "MigrationConfig",
    "ReloadConfig",
    "SentinelConfig",
    "ShardConfig",
    "ShutdownConfig",
    "TimeoutsConfig",
    "changed_settings",
    "load",
    "parse",
    "reference_markdown",
]
