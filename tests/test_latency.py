"""The local server's latency profile: each request waits what it waits from Lambda on AWS, while
other requests are served meanwhile (parallelrun.local.latency)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from parallelrun.local import server
from parallelrun.local.latency import LATENCY, latency_of

AWS = LATENCY["aws"]


def test_each_request_is_priced_by_service_and_operation():
    assert latency_of(AWS, "s3", {"REQUEST_METHOD": "GET"}) == 0.027
    assert latency_of(AWS, "s3", {"REQUEST_METHOD": "PUT"}) == 0.060
    transact = {"REQUEST_METHOD": "POST", "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.TransactWriteItems"}
    assert latency_of(AWS, "dynamodb", transact) == 0.025
    assert latency_of(AWS, "dynamodb", {"REQUEST_METHOD": "POST", "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.GetItem"}) == 0.008
    assert latency_of(AWS, "sqs", {"REQUEST_METHOD": "POST"}) == 0.015
    assert latency_of(AWS, "sts", {"REQUEST_METHOD": "POST"}) == 0.0


def test_requests_wait_their_latency_but_not_for_each_other():
    moto, url = server.start(latency="aws")
    try:
        s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="latency")
        s3.put_object(Bucket="latency", Key="k", Body=b"x")
        started = time.perf_counter()
        s3.get_object(Bucket="latency", Key="k")["Body"].read()
        assert time.perf_counter() - started >= AWS[("s3", "GET")]
        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: s3.get_object(Bucket="latency", Key="k")["Body"].read(), range(8)))
        assert time.perf_counter() - started < 8 * AWS[("s3", "GET")]  # served side by side, not in turn
    finally:
        moto.stop()


def test_an_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="latency profile 'mars'"):
        server.CountingMotoServer("127.0.0.1", 0, "mars")
