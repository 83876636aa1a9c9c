"""The process: composition root, listeners and shutdown, the worker supervisor, admin HTTP, reload, the CLI, README generation, the command-table generator."""
