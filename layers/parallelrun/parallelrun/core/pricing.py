"""The one price table: what a job's measured usage would cost on AWS, as an estimate.

List prices, on-demand, without the free tier or savings plans, for Lambda on x86_64 (the
template's architecture), SQS standard queues, S3 Standard requests and DynamoDB on-demand
capacity. Storage, data transfer and CloudWatch Logs are not included. Prices change: the table
says when it was taken, and a region without a row of its own is priced as ``DEFAULT_REGION``,
which the estimate then says.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

PRICES_AS_OF = "2025-01"  # AWS's published list prices at that date
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class Prices:
    """USD per unit."""

    lambda_gb_second: float
    lambda_request: float
    sqs_request: float
    s3_put_request: float  # PUT, COPY, POST, LIST
    s3_get_request: float  # GET and every other request but DELETE (free)
    dynamodb_write_unit: float  # on-demand write request unit
    dynamodb_read_unit: float  # on-demand read request unit


_US = Prices(lambda_gb_second=0.0000166667, lambda_request=0.20 / 1e6, sqs_request=0.40 / 1e6,
             s3_put_request=0.005 / 1000, s3_get_request=0.0004 / 1000,
             dynamodb_write_unit=0.625 / 1e6, dynamodb_read_unit=0.125 / 1e6)
TABLE: dict[str, Prices] = {
    "us-east-1": _US,
    "us-east-2": _US,
    "us-west-2": _US,
    "eu-west-1": Prices(lambda_gb_second=0.0000166667, lambda_request=0.20 / 1e6, sqs_request=0.40 / 1e6,
                        s3_put_request=0.005 / 1000, s3_get_request=0.0004 / 1000,
                        dynamodb_write_unit=0.705 / 1e6, dynamodb_read_unit=0.141 / 1e6),
    "eu-central-1": Prices(lambda_gb_second=0.0000166667, lambda_request=0.20 / 1e6, sqs_request=0.40 / 1e6,
                           s3_put_request=0.0054 / 1000, s3_get_request=0.00043 / 1000,
                           dynamodb_write_unit=0.7625 / 1e6, dynamodb_read_unit=0.1525 / 1e6),
}


def prices_for(region: str) -> tuple[str, Prices]:
    """The region whose prices apply, and its prices."""
    priced = region if region in TABLE else DEFAULT_REGION
    return priced, TABLE[priced]


def estimate(usage: dict[str, Any], region: str) -> dict[str, Any]:
    """USD for ``usage`` (``parallelrun.core.usage.Tally.to_dict()``) in ``region``, by service."""
    priced, p = prices_for(region)
    functions, requests = usage["functions"], usage["requests"]
    gb_seconds = sum(f["gb_seconds"] for f in functions.values())
    invocations = sum(f["invocations"] for f in functions.values())
    usd = {
        "lambda_compute": gb_seconds * p.lambda_gb_second,
        "lambda_requests": invocations * p.lambda_request,
        "sqs": requests["sqs"] * p.sqs_request,
        "s3": requests["s3_put"] * p.s3_put_request + requests["s3_get"] * p.s3_get_request,
        "dynamodb": requests["dynamodb_write_units"] * p.dynamodb_write_unit
        + requests["dynamodb_read_units"] * p.dynamodb_read_unit,
    }
    usd["total"] = sum(usd.values())
    note = (f"An estimate, not a bill: measured durations x configured memory and counted requests, priced with "
            f"AWS list prices of {PRICES_AS_OF} for {priced}")
    if priced != region:
        note += f" (the table has no prices for {region})"
    note += "; storage, data transfer and logs are not included."
    return {"estimate": True, "note": note, "region": region, "priced_as_region": priced,
            "prices_as_of": PRICES_AS_OF, "prices": {k: float(f"{v:.6g}") for k, v in asdict(p).items()},
            "usd": {k: round(v, 12) for k, v in usd.items()}}


def cost_section(usage: dict[str, Any], region: str) -> dict[str, Any]:
    """``summary.json``'s ``cost``: the usage and its estimated price."""
    return {**estimate(usage, region), **usage}
