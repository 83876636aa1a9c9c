"""RESP on the wire, sans-IO: request parser, reply scanner, encoders, push frames, the error table, the reply queue's FIFO. Imports nothing else of the package."""
