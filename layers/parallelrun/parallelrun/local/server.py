"""A moto server on 127.0.0.1: the AWS of the local stack, shared by every local process."""

from __future__ import annotations

import logging
import socket

from moto.server import ThreadedMotoServer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(port: int | None = None) -> tuple[ThreadedMotoServer, str]:
    """Start a moto server in this process (a thread); return it and its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # it logs every request otherwise
    port = port or free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"
