"""Where a key lives: twemproxy's hash functions, the ketama/modula ring, the router. Pure logic."""
