"""The S3 calls: the stream writer and owned writes, with a stand-in client and on in-process moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from parallelrun import aws
from parallelrun.aws import s3


class FakeS3:
    """The S3 calls the writer makes, on a dict; conditional puts as S3 answers them."""

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str], str]] = {}  # key: body, metadata, etag
        self.uploads: dict[str, list[bytes]] = {}
        self.calls: list[str] = []

    def _store(self, key: str, body: bytes, metadata: dict[str, str] | None, condition: dict[str, str]) -> dict:
        found = self.objects.get(key)
        taken = "IfNoneMatch" in condition and found
        changed = "IfMatch" in condition and (not found or found[2] != condition["IfMatch"])
        if taken or changed:
            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "a pre-condition did not hold"}},
                              "PutObject")
        etag = f'"{len(self.calls)}"'
        self.objects[key] = (body, dict(metadata or {}), etag)
        return {"ETag": etag}

    def put_object(self, Bucket: str, Key: str, Body: Any, Metadata: dict | None = None, **condition: Any) -> dict:
        self.calls.append("PutObject")
        return self._store(Key, Body if isinstance(Body, bytes) else Body.read(), Metadata, condition)

    def create_multipart_upload(self, Bucket: str, Key: str, Metadata: dict | None = None) -> dict:
        self.calls.append("CreateMultipartUpload")
        self.uploads[Key] = []
        self.metadata = Metadata
        return {"UploadId": Key}

    def upload_part(self, Bucket: str, Key: str, UploadId: str, PartNumber: int, Body: bytes) -> dict:
        self.calls.append("UploadPart")
        assert PartNumber == len(self.uploads[UploadId]) + 1
        self.uploads[UploadId].append(Body)
        return {"ETag": f"part-{PartNumber}"}

    def complete_multipart_upload(self, Bucket: str, Key: str, UploadId: str, MultipartUpload: dict,
                                  **condition: Any) -> dict:
        self.calls.append("CompleteMultipartUpload")
        expected = [f"part-{number}" for number in range(1, len(self.uploads[UploadId]) + 1)]
        assert [p["ETag"] for p in MultipartUpload["Parts"]] == expected
        return self._store(Key, b"".join(self.uploads[UploadId]), self.metadata, condition)

    def abort_multipart_upload(self, Bucket: str, Key: str, UploadId: str) -> None:
        self.calls.append("AbortMultipartUpload")
        del self.uploads[UploadId]

    def head_object(self, Bucket: str, Key: str) -> dict:
        self.calls.append("HeadObject")
        body, metadata, etag = self.objects[Key]
        return {"ContentLength": len(body), "Metadata": metadata, "ETag": etag}


def test_a_small_object_is_one_put():
    fake = FakeS3()
    writer = s3.S3StreamWriter("b", "k", upload_part_size=10, client=fake)
    writer.write(b"abc")
    writer.write(b"def")
    writer.close()
    assert fake.calls == ["PutObject"] and fake.objects["k"][0] == b"abcdef" and writer.size == 6


def test_a_large_object_is_uploaded_in_parts_holding_one_at_a_time():
    fake = FakeS3()
    writer = s3.S3StreamWriter("b", "k", upload_part_size=10, client=fake)
    held = []
    for i in range(25):
        writer.write(bytes([65 + i]) * 2)
        held.append(len(writer.buffer))
    writer.close()
    assert max(held) < 10 and [len(part) for part in fake.uploads["k"]] == [10, 10, 10, 10, 10]
    assert fake.objects["k"][0] == b"".join(bytes([65 + i]) * 2 for i in range(25))
    assert fake.calls == ["CreateMultipartUpload"] + ["UploadPart"] * 5 + ["CompleteMultipartUpload"]


def test_an_aborted_upload_is_discarded_and_a_completed_one_is_not():
    fake = FakeS3()
    writer = s3.S3StreamWriter("b", "k", upload_part_size=4, client=fake)
    writer.write(b"12345")
    writer.abort()
    assert "k" not in fake.uploads and "k" not in fake.objects
    done = s3.S3StreamWriter("b", "j", upload_part_size=4, client=fake)
    done.write(b"12345")
    done.close()
    done.abort()
    assert fake.calls[-1] == "CompleteMultipartUpload"


def test_an_owned_object_is_written_over_only_by_its_owner():
    fake = FakeS3()
    for body in (b"first", b"again"):  # a retried aggregation writes over its own file
        writer = s3.S3StreamWriter("b", "out/failures.jsonl", upload_part_size=4, owner="job-1", client=fake)
        writer.write(body)
        writer.close()
    assert fake.objects["out/failures.jsonl"][:2] == (b"again", {s3.OWNER_METADATA: "job-1"})
    other = s3.S3StreamWriter("b", "out/failures.jsonl", owner="job-2", client=fake)
    other.write(b"theirs")
    with pytest.raises(s3.OutputTaken, match="job job-2 did not write it"):
        other.close()
    assert fake.objects["out/failures.jsonl"][0] == b"again"


def test_put_owned_writes_bytes_or_a_file_once_per_owner(tmp_path: Path):
    fake = FakeS3()
    s3.put_owned("b", "out/summary.json", b"{}", "job-1", client=fake, ContentType="application/json")
    path = tmp_path / "extra.txt"
    path.write_bytes(b"from the script")
    s3.put_owned("b", "out/extra.txt", path, "job-1", client=fake)
    s3.put_owned("b", "out/extra.txt", path, "job-1", client=fake)  # over its own file
    assert fake.objects["out/extra.txt"][:2] == (b"from the script", {s3.OWNER_METADATA: "job-1"})
    fake.objects["out/mine.txt"] = (b"by hand", {}, '"x"')
    with pytest.raises(s3.OutputTaken):
        s3.put_owned("b", "out/mine.txt", b"over it", "job-1", client=fake)
    assert fake.objects["out/mine.txt"][0] == b"by hand"


def test_stream_writer_uses_multipart_and_bounded_memory(stack):
    bucket = stack.cfg.artifacts_bucket
    writer = s3.S3StreamWriter(bucket, "bench/big.txt", upload_part_size=5 * 1024 * 1024)
    chunk = b"x" * (256 * 1024)
    buffered = []
    for i in range(48):  # 12 MiB in 256 KiB writes
        writer.write(bytes([65 + i % 26]) + chunk[1:])
        buffered.append(len(writer.buffer))
    writer.close()
    assert len(writer.upload_parts) == 3  # 5 MiB + 5 MiB + 2 MiB
    # What the writer holds never passes one part (in-process moto's own copy of the object
    # would swamp a tracemalloc reading, so the writer's buffer is what is measured).
    assert max(buffered) < 5 * 1024 * 1024
    body = aws.client("s3").get_object(Bucket=bucket, Key="bench/big.txt")["Body"].read()
    assert len(body) == 12 * 1024 * 1024
    assert [body[i * len(chunk)] for i in range(48)] == [65 + i % 26 for i in range(48)]


def test_stream_writer_small_output_is_one_put(stack):
    writer = s3.S3StreamWriter(stack.cfg.artifacts_bucket, "bench/small.txt")
    writer.write(b"a\n")
    writer.write(b"b\n")
    writer.close()
    assert writer.upload_id is None
    assert aws.client("s3").get_object(Bucket=stack.cfg.artifacts_bucket, Key="bench/small.txt")["Body"].read() == b"a\nb\n"


class Recorder:
    """A stand-in client that records each call's name and arguments."""

    def __init__(self, **answers: Any) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.answers = answers

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            answer = self.answers.get(name)
            return answer(*args, **kwargs) if callable(answer) else answer
        return call


def test_under_lists_every_page_of_a_prefix():
    pages = [{"Contents": [{"Key": "p/a"}, {"Key": "p/b"}]}, {}, {"Contents": [{"Key": "p/c"}]}]
    paginator = Recorder(paginate=lambda **kwargs: iter(pages))
    fake = Recorder(get_paginator=lambda name: paginator)
    assert [o["Key"] for o in s3.under("b", "p/", fake)] == ["p/a", "p/b", "p/c"]
    assert fake.calls[0][1] == ("list_objects_v2",) and paginator.calls[0][2] == {"Bucket": "b", "Prefix": "p/"}


def test_put_new_writes_only_where_nothing_is():
    fake = FakeS3()
    assert s3.put_new("b", "code/abc.zip", b"zip", fake)
    assert not s3.put_new("b", "code/abc.zip", b"zip", fake)  # already there: not an error

    def denied(**kwargs: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")

    with pytest.raises(ClientError, match="AccessDenied"):
        s3.put_new("b", "code/abc.zip", b"zip", Recorder(put_object=denied))


def test_open_existing_is_none_for_a_missing_key(stack):
    bucket = stack.cfg.artifacts_bucket
    s3.put(bucket, "bench/here.txt", b"here")
    assert s3.open_existing(bucket, "bench/here.txt").read() == b"here"
    assert s3.open_existing(bucket, "bench/not-here.txt") is None


def test_transfers_take_paths_as_strings(tmp_path: Path):
    fake = Recorder()
    s3.upload_file(tmp_path / "a.bin", "b", "k/a.bin", fake)
    s3.download_file("b", "k/a.bin", tmp_path / "b.bin", fake)
    assert fake.calls == [("upload_file", (str(tmp_path / "a.bin"), "b", "k/a.bin"), {}),
                          ("download_file", ("b", "k/a.bin", str(tmp_path / "b.bin")), {})]


def test_a_bucket_notifies_a_queue_with_only_the_filters_given():
    fake = Recorder()
    s3.notify_queue("b", "arn:q", ["s3:ObjectCreated:*"], suffix="_READY", client=fake)
    s3.notify_queue("b", "arn:q", ["s3:ObjectCreated:*"], client=fake)
    (_, _, filtered), (_, _, plain) = fake.calls
    assert filtered["NotificationConfiguration"] == {"QueueConfigurations": [{
        "QueueArn": "arn:q", "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": "_READY"}]}}}]}
    assert "Filter" not in plain["NotificationConfiguration"]["QueueConfigurations"][0]
