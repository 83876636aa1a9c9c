"""One client connection: the client protocol, the mode table and one module per mode, fan-out, the commands the proxy answers itself, the client registry."""
