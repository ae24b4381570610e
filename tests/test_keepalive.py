"""The local server keeps a client's connection open between requests, as AWS's endpoints do
(parallelrun.local.keepalive), without one request's body leaking into the next, and a forked
process never shares its parent's kept connections (parallelrun.aws) nor waits on its fetch
threads (parallelrun.pipeline.worker)."""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from parallelrun import aws
from parallelrun.local import server

BUCKET = "keepalive"


@pytest.fixture(scope="module")
def moto() -> Iterator[tuple[server.CountingMotoServer, str]]:
    running, url = server.start()
    s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                               region_name="us-east-1").client("s3", endpoint_url=url)
    s3.create_bucket(Bucket=BUCKET)
    try:
        yield running, url
    finally:
        running.stop()


def _signed(url: str, method: str, key: str, body: bytes = b"") -> tuple[str, dict[str, str]]:
    """Path and headers of an S3 request signed as botocore signs it (the server reads the
    service from the signature)."""
    request = AWSRequest(method=method, url=f"{url}/{BUCKET}/{key}", data=body,
                         headers={"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(Credentials("testing", "testing"), "s3", "us-east-1").add_auth(request)
    return f"/{BUCKET}/{key}", dict(request.headers.items())


def test_one_connection_serves_request_after_request(moto):
    _, url = moto
    connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=10)
    for number in range(3):
        body = f"body {number}".encode()
        path, headers = _signed(url, "PUT", f"k{number}", body)
        connection.request("PUT", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        assert not response.will_close, "the server closed the connection after a response"
        socket_used = connection.sock
        path, headers = _signed(url, "GET", f"k{number}")
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        assert response.read() == body
        assert connection.sock is socket_used  # the same socket: no new connection was opened
    connection.close()


def test_a_body_the_server_never_reads_does_not_become_the_next_request(moto):
    running, url = moto
    connection = http.client.HTTPConnection(urlparse(url).netloc, timeout=10)
    running.throttle_every["s3"] = 1  # answered before moto reads the body
    try:
        body = b"GET /not-a-request HTTP/1.1\r\n\r\n" * 50
        path, headers = _signed(url, "PUT", "throttled", body)
        connection.request("PUT", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        assert response.status == 503
    finally:
        running.throttle_every.pop("s3")
    path, headers = _signed(url, "PUT", "after", b"after")
    connection.request("PUT", path, body=b"after", headers=headers)
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    path, headers = _signed(url, "GET", "after")
    connection.request("GET", path, headers=headers)
    assert connection.getresponse().read() == b"after"
    connection.close()


def test_a_forked_child_opens_its_own_connections(moto, monkeypatch):
    _, url = moto
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    aws.reset_clients()
    parent = aws.client("s3")
    parent.put_object(Bucket=BUCKET, Key="fork", Body=b"from the parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it got the parent's client (and its sockets)
        try:
            child = aws.client("s3")
            result = {"same": child is parent,
                      "body": child.get_object(Bucket=BUCKET, Key="fork")["Body"].read().decode()}
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    result = json.loads(os.read(read, 4096))
    os.close(read)
    assert result == {"same": False, "body": "from the parent"}
    assert parent.get_object(Bucket=BUCKET, Key="fork")["Body"].read() == b"from the parent"
    aws.reset_clients()


class _Connection:
    """A socket stand-in for http.client.HTTPResponse: every response read from it shares one
    buffered reader of the socket, which reading a response to its end does not close."""

    class Reader(io.BufferedReader):
        def close(self) -> None:
            return None

    def __init__(self, sock: socket.socket) -> None:
        self.reader = self.Reader(socket.SocketIO(sock, "rb"))  # type: ignore[arg-type]

    def makefile(self, *_: Any, **__: Any) -> Any:
        return self.reader


def test_a_request_sent_before_the_last_answer_is_served_not_swallowed(moto):
    # werkzeug, after each response, reads whatever the socket still holds as the rest of the
    # request's body: a next request already sent would be swallowed (and the read would wait
    # for more). A client may send it as soon as the answer is out; here it is sent at once.
    _, url = moto
    first_path, first_headers = _signed(url, "PUT", "pipelined", b"first")
    second_path, second_headers = _signed(url, "GET", "pipelined")

    def raw(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {urlparse(url).netloc}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    with socket.create_connection((urlparse(url).hostname, urlparse(url).port), timeout=5) as sock:
        sock.sendall(raw("PUT", first_path, first_headers, b"first") + raw("GET", second_path, second_headers))
        connection = _Connection(sock)
        answers = []
        for _ in range(2):
            response = http.client.HTTPResponse(connection)  # type: ignore[arg-type]
            response.begin()
            answers.append((response.status, response.read()))
    assert answers == [(200, b""), (200, b"first")]


def test_a_forked_child_fetches_with_threads_of_its_own():
    from parallelrun.pipeline import worker

    assert worker.fetcher().submit(lambda: "parent").result(timeout=5) == "parent"  # its threads started
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, worker.fetcher().submit(lambda: "child").result(timeout=5).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    answer = os.read(read, 100)
    os.close(read)
    assert answer == b"child"
