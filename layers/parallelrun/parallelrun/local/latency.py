"""Latency profiles of the local server: how long a request waits before moto answers it.

moto answers in about a millisecond; from Lambda, AWS answers in tens. A profile makes the local
server wait what the same request waits on AWS (while it serves others), so that overlapping I/O
is measured locally as it pays off there. No moto import here: the CLI names the profiles.
"""

from __future__ import annotations

from typing import Any

# Round trips from a Lambda function to the service in its region, in seconds: the figures DESIGN
# §6 records (small S3 GET p50 27 ms, "tens of milliseconds" in AWS's S3 performance guidelines,
# https://docs.aws.amazon.com/whitepapers/latest/s3-optimizing-performance-best-practices/;
# small PUT p50 60 ms; DynamoDB single-item p50 8 ms, TransactWriteItems p50 25 ms; SQS 15 ms).
LATENCY = {
    "aws": {("s3", "GET"): 0.027, ("s3", "HEAD"): 0.027, ("s3", "PUT"): 0.060, ("s3", "POST"): 0.060,
            ("dynamodb", "TransactWriteItems"): 0.025, ("dynamodb", ""): 0.008, ("sqs", ""): 0.015},
}


def latency_of(profile: dict[tuple[str, str], float], service: str, environ: dict[str, Any]) -> float:
    """How long a request waits in ``profile``: by service and HTTP method (S3) or operation
    (DynamoDB's X-Amz-Target), else the service's own figure; 0 for a service not in it."""
    operation = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
    for key in ((service, environ.get("REQUEST_METHOD", "")), (service, operation), (service, "")):
        if key in profile:
            return profile[key]
    return 0.0
