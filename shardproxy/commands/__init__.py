"""The command table: the generated Redis command data and the proxy's routing policy over it."""
