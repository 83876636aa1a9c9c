"""The metric table and the cheap counters behind it, and logging."""
