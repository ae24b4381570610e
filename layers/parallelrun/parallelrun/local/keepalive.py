"""Connections kept open between requests, as AWS's endpoints keep them (HTTP/1.1 keep-alive).

werkzeug's development server, which moto's server is, ends every response with
``Connection: close``: http.server cannot tell where a request body the app left unread ends,
so werkzeug reads whatever else the socket holds after each response and closes. Every request
of every local process then paid a TCP connect and the server a new thread for it (urllib3
logs "Resetting dropped connection" before each one), while botocore's pool, like every AWS
SDK's, reuses connections, since for a short operation "the latency overhead of setting up a
TCP connection might be greater than the operation itself"
(https://docs.aws.amazon.com/sdk-for-javascript/v3/developer-guide/node-reusing-connections.html).

Here each request's body is read whole before the app sees it, so nothing of it is left on the
socket; the response leaves the connection open, and the drain after the response is skipped
for these requests (it would otherwise wait 10 ms on every request and could read the next
request's line as leftover body).
"""

from __future__ import annotations

import io
import selectors
import threading
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler
from werkzeug import serving

_read_whole = threading.local()  # set while a handler of this module serves a request


class KeepAliveRequestHandler(MotoRequestHandler):
    """moto's request handler, reading each body whole and keeping the connection open."""

    # A kept connection with Nagle's algorithm waits out the client's delayed ACK (about 40 ms)
    # on each response werkzeug writes in pieces (status and headers, then the body).
    disable_nagle_algorithm = True

    def make_environ(self) -> dict[str, Any]:
        environ = super().make_environ()
        if environ.get("wsgi.input_terminated"):  # a chunked body: werkzeug's reader stops at its end
            body = environ["wsgi.input"].read()
        else:
            body = self.rfile.read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        return environ

    def run_wsgi(self) -> None:
        _read_whole.active = True
        try:
            super().run_wsgi()
        finally:
            _read_whole.active = False

    def send_header(self, keyword: str, value: str) -> None:
        if getattr(_read_whole, "active", False) and keyword.lower() == "connection" and value.lower() == "close":
            return  # werkzeug's, on every response: the client may send its next request here
        super().send_header(keyword, value)


class _NothingLeft:
    """The selector werkzeug drains a request's unread body with, once the body was read whole."""

    def register(self, *_: Any) -> None:
        return None

    def select(self, timeout: float | None = None) -> list:
        return []

    def close(self) -> None:
        return None


class _Selectors:
    """werkzeug.serving's ``selectors``: the real module, but no drain after a body read whole."""

    EVENT_READ = selectors.EVENT_READ

    @staticmethod
    def DefaultSelector() -> Any:  # noqa: N802 - the name werkzeug calls
        return _NothingLeft() if getattr(_read_whole, "active", False) else selectors.DefaultSelector()


def install() -> None:
    """Skip werkzeug's drain for this module's handler; other servers of the process keep it."""
    serving.selectors = _Selectors  # type: ignore[assignment]
