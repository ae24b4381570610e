"""The S3 calls the pipeline makes: whole objects in and out, files a job owns in its output
folder, and an object of any size streamed in bounded memory.

Each call takes an optional ``client`` (the shared one by default), so that what is built on
them is tested with a stand-in. A job's output folder may be shared by mistake: an object the
job writes there carries the job's id in its metadata (``OWNER_METADATA``), and is written only
where nothing is, or over what the same job wrote (:func:`write_owned`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union

from botocore.exceptions import ClientError

from parallelrun import aws
from parallelrun.core import joins, usage
from parallelrun.core.errors import ConflictError

# S3 multipart upload parts must be >= 5 MiB but the last; the stream writer holds one.
UPLOAD_PART_SIZE = 8 * 1024 * 1024
OWNER_METADATA = "parallelrun-job"  # an output file's S3 metadata: the job that wrote it
DOWNLOAD_CHUNK = 1024 * 1024
# Upload parts sent at once by a join: each holds at most one least part (5 MiB) in memory.
JOIN_THREADS = 8


def error_code(error: ClientError) -> str:
    """The code of an S3 error (``NoSuchKey``, ``AccessDenied``, ...)."""
    return error.response["Error"]["Code"]


def get(bucket: str, key: str, client: Any = None) -> bytes:
    return (client or aws.client("s3")).get_object(Bucket=bucket, Key=key)["Body"].read()


def open_object(bucket: str, key: str, client: Any = None) -> tuple[int, BinaryIO]:
    """(size, unread body) of an object, for a caller that reads no more than it allows."""
    response = (client or aws.client("s3")).get_object(Bucket=bucket, Key=key)
    return response["ContentLength"], response["Body"]


def put(bucket: str, key: str, body: bytes, client: Any = None, **extra: Any) -> None:
    (client or aws.client("s3")).put_object(Bucket=bucket, Key=key, Body=body, **extra)


def head(bucket: str, key: str, client: Any = None) -> dict[str, Any]:
    return (client or aws.client("s3")).head_object(Bucket=bucket, Key=key)


def first_key(bucket: str, prefix: str, client: Any = None) -> str | None:
    """The first key under ``prefix``, None if there is none (one List request, whatever the count)."""
    listed = (client or aws.client("s3")).list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents", [])
    return listed[0]["Key"] if listed else None


def open_existing(bucket: str, key: str, client: Any = None) -> BinaryIO | None:
    """The unread body of an object, None if there is no such key (any other error raises)."""
    s3 = client or aws.client("s3")
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"]
    except s3.exceptions.NoSuchKey:
        return None


def put_new(bucket: str, key: str, body: bytes, client: Any = None) -> bool:
    """Put ``key`` only where no object is; False if one was there (or a concurrent put of the
    same key won: content-addressed keys hold the same bytes whoever wrote them)."""
    try:
        put(bucket, key, body, client, IfNoneMatch="*")
    except ClientError as error:
        if error_code(error) not in ("PreconditionFailed", "ConditionalRequestConflict"):
            raise
        return False
    return True


def under(bucket: str, prefix: str, client: Any = None, after: str = "") -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` as ListObjectsV2 describes it (Key, Size, ETag...), in S3's
    (UTF-8 byte, so ``str``) order, streamed page by page; given ``after``, only the keys after it
    (StartAfter, which S3 takes as any key, listed or not, so a listing resumes exactly where it
    stopped: https://docs.aws.amazon.com/AmazonS3/latest/API/API_ListObjectsV2.html)."""
    paginator = (client or aws.client("s3")).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **({"StartAfter": after} if after else {})):
        yield from page.get("Contents", [])


def delete_keys(bucket: str, keys: list[str], client: Any = None) -> None:
    """Delete ``keys``, one DeleteObject each, each authorized on the object's own ARN (a grant
    scoped to a prefix); the local stack's IAM checks a DeleteObjects against the bucket's."""
    s3 = client or aws.client("s3")
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)


def download(bucket: str, key: str, path: Path, client: Any = None) -> None:
    """One object into a local file, streamed: one GetObject (download_file would add a HeadObject)."""
    body = (client or aws.client("s3")).get_object(Bucket=bucket, Key=key)["Body"]
    with open(path, "wb") as handle:
        for chunk in body.iter_chunks(DOWNLOAD_CHUNK):
            handle.write(chunk)


def download_file(bucket: str, key: str, path: Path | str, client: Any = None) -> None:
    """One object into a local file by boto3's transfer manager (a HeadObject, then ranged GETs
    in parallel for a large object): for models and side inputs, which may be big."""
    (client or aws.client("s3")).download_file(bucket, key, str(path))


def upload_file(path: Path | str, bucket: str, key: str, client: Any = None) -> None:
    """A local file into ``key`` by boto3's transfer manager (a multipart upload for a large file)."""
    (client or aws.client("s3")).upload_file(str(path), bucket, key)


def notify_queue(bucket: str, queue_arn: str, events: list[str], prefix: str = "", suffix: str = "",
                 client: Any = None) -> None:
    """Send the bucket's ``events`` (for keys with that prefix and suffix) to an SQS queue; this
    replaces the bucket's whole notification configuration."""
    rules = [{"Name": n, "Value": v} for n, v in (("prefix", prefix), ("suffix", suffix)) if v]
    config: dict[str, Any] = {"QueueArn": queue_arn, "Events": events}
    if rules:
        config["Filter"] = {"Key": {"FilterRules": rules}}
    (client or aws.client("s3")).put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [config]})


class OutputTaken(ConflictError):
    """A file of the job's output folder exists and another job (or no job) wrote it."""


def write_owned(client: Any, bucket: str, key: str, owner: str, write: Callable[..., Any]) -> None:
    """``write(**condition)`` puts ``key`` only where no object is, or over one ``owner`` wrote (an
    earlier try of this job's aggregation, which died); anything else raises :class:`OutputTaken`
    and stays as it is. The owner is in the object's metadata (see :class:`S3StreamWriter`)."""
    try:
        write(IfNoneMatch="*")
        return
    except ClientError as error:
        if error_code(error) != "PreconditionFailed":
            raise
    found = client.head_object(Bucket=bucket, Key=key)
    if found.get("Metadata", {}).get(OWNER_METADATA) != owner:
        raise OutputTaken(f"s3://{bucket}/{key} already exists and job {owner} did not write it: it was left as it "
                          "is (give each job an output_path of its own)")
    write(IfMatch=found["ETag"])  # the file this job wrote, unless it changed since it was looked at


def put_owned(bucket: str, key: str, body: bytes | Path, owner: str, client: Any = None, **extra: Any) -> None:
    """Put ``body`` (bytes, or a local file's contents) at ``key`` as :func:`write_owned` allows."""
    s3 = client or aws.client("s3")

    def write(**condition: str) -> None:
        if isinstance(body, Path):
            with open(body, "rb") as stream:
                s3.put_object(Bucket=bucket, Key=key, Body=stream, Metadata={OWNER_METADATA: owner}, **extra,
                              **condition)
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={OWNER_METADATA: owner}, **extra, **condition)

    write_owned(s3, bucket, key, owner, write)


class S3StreamWriter:
    """Write an S3 object of any size in bounded memory: a multipart upload once it outgrows one
    upload part. With an ``owner`` (a job id), the object is written as :func:`write_owned` says."""

    def __init__(self, bucket: str, key: str, upload_part_size: int = UPLOAD_PART_SIZE, owner: str = "",
                 client: Any = None) -> None:
        self.bucket, self.key, self.upload_part_size, self.owner = bucket, key, upload_part_size, owner
        self.s3 = client or aws.client("s3")
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.upload_parts: list[dict[str, Any]] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        if len(self.buffer) >= self.upload_part_size:
            self._upload_part()

    def _upload_part(self) -> None:
        if self.upload_id is None:
            self.upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=self.key,
                                                             **self._metadata())["UploadId"]
        number = len(self.upload_parts) + 1
        etag = self.s3.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number,
                                   Body=bytes(self.buffer))["ETag"]
        self.upload_parts.append({"PartNumber": number, "ETag": etag})
        self.buffer.clear()

    def _metadata(self) -> dict[str, Any]:
        return {"Metadata": {OWNER_METADATA: self.owner}} if self.owner else {}

    def close(self) -> None:
        if self.upload_id is None:
            write = functools.partial(self.s3.put_object, Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer),
                                      **self._metadata())
        else:
            if self.buffer:
                self._upload_part()
            write = functools.partial(self.s3.complete_multipart_upload, Bucket=self.bucket, Key=self.key,
                                      UploadId=self.upload_id, MultipartUpload={"Parts": self.upload_parts})
        if self.owner:
            write_owned(self.s3, self.bucket, self.key, self.owner, write)
        else:
            write()
        self.upload_id = None  # completed: nothing is left for abort() to discard

    def abort(self) -> None:
        if self.upload_id is not None:
            self.s3.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


@dataclass(frozen=True)
class Stored:
    """An object to be joined, and its size."""

    bucket: str
    key: str
    size: int


Source = Union[bytes, Stored]


def join(bucket: str, key: str, sources: list[Source], owner: str, client: Any = None,
         min_part: int = joins.MIN_PART) -> None:
    """Write ``key`` as the sources one after another (bytes given here, or stored objects),
    copying the stored ones server-side where S3 allows (:func:`parallelrun.core.joins.plan_join`),
    as :func:`write_owned` allows. Memory holds at most :data:`JOIN_THREADS` least parts."""
    s3 = client or aws.client("s3")
    parts = joins.plan_join([len(s) if isinstance(s, bytes) else s.size for s in sources], min_part)

    def read(piece: joins.Piece) -> bytes:
        source = sources[piece.source]
        if isinstance(source, bytes):
            return source[piece.start:piece.end]
        return s3.get_object(Bucket=source.bucket, Key=source.key,
                             Range=f"bytes={piece.start}-{piece.end - 1}")["Body"].read()

    metadata = {OWNER_METADATA: owner}
    if not parts or (len(parts) == 1 and not parts[0].copied):
        body = b"".join(read(piece) for piece in parts[0].pieces) if parts else b""
        write_owned(s3, bucket, key, owner, functools.partial(s3.put_object, Bucket=bucket, Key=key, Body=body,
                                                              Metadata=metadata))
        return
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)["UploadId"]

    def send(numbered: tuple[int, joins.Part]) -> dict[str, Any]:
        number, part = numbered
        if part.copied:
            piece = part.pieces[0]
            source = sources[piece.source]
            assert isinstance(source, Stored)
            etag = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                       CopySource={"Bucket": source.bucket, "Key": source.key},
                                       CopySourceRange=f"bytes={piece.start}-{piece.end - 1}")["CopyPartResult"]["ETag"]
        else:
            etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                  Body=b"".join(read(piece) for piece in part.pieces))["ETag"]
        return {"PartNumber": number, "ETag": etag}

    try:
        with ThreadPoolExecutor(max_workers=JOIN_THREADS) as pool:
            uploaded = list(pool.map(usage.bind(send), enumerate(parts, 1)))
        write_owned(s3, bucket, key, owner, functools.partial(
            s3.complete_multipart_upload, Bucket=bucket, Key=key, UploadId=upload_id,
            MultipartUpload={"Parts": uploaded}))
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
