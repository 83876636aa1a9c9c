"""shardproxy: a RESP proxy in front of a fleet of primary/replica Redis shards."""

__version__ = "0.1.0"
