"""Benchmarks of shardproxy against nutcracker and direct Redis: ``python -m bench.run --help``."""
