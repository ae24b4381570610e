"""A moto server on 127.0.0.1: the AWS of the local stack, shared by every local process."""

from __future__ import annotations

import logging

from moto.server import ThreadedMotoServer


def start(port: int | None = None) -> tuple[ThreadedMotoServer, str]:
    """Start a moto server in this process (a thread); return it and its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # it logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port or 0, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"
