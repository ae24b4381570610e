"""A moto server on 127.0.0.1: the AWS of the local stack, shared by every local process.

It counts the requests it serves, by service, so the local stack can say what a job would have
asked of AWS (requests per mini-batch in the benchmark).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

_SERVICE = re.compile(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/")


class CountingMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer whose app counts each request by the service its signature names."""

    def __init__(self, ip_address: str, port: int) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self.counts: collections.Counter[str] = collections.Counter()
        self._count_lock = threading.Lock()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ: dict[str, Any], start_response: Any) -> Any:
            match = _SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
            with self._count_lock:
                self.counts[match.group(1) if match else "other"] += 1
            return app(environ, start_response)

        self._server = make_server(self._ip_address, self._port, counting, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def snapshot(self) -> dict[str, int]:
        with self._count_lock:
            return dict(self.counts)


def start(port: int | None = None) -> tuple[CountingMotoServer, str]:
    """Start a moto server in this process (a thread); return it and its endpoint URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # it logs every request otherwise
    server = CountingMotoServer("127.0.0.1", port or 0)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"
