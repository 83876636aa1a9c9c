"""Connections to Redis: the one dialer, shared pipelines, leased connections, nodes, and the reply-slot base classes backends complete."""
