"""Upload benchmark: one large file through `uploadMedia` and through the resumable path, against raw S3.

Starts its own embedded servers and one API process, writes a WAV file of --size-mb (a real, probe-able media file),
then measures, each into a case of its own:

- raw: an aioboto3 multipart upload of the file straight to the same S3 server (the ceiling);
- uploadMedia: the file as a GraphQL multipart request, streamed by the API to S3 while it is hashed;
- resumable: `startUpload`, the parts PUT to their presigned URLs, then `completeUpload` (which re-hashes the stored
  object and probes it).

Throughput counts from the first byte sent until the media is registered. Peak memory is the API process's high-water
mark (VmHWM), read after all uploads.

Run: .venv/bin/python bench/upload.py [--size-mb 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aioboto3
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aima.cli import create_account
from aima.db.models import Role
from aima.settings import Settings
from aima.testing.stack import local_aima

EMAIL = "bench-upload@example.org"
PASSWORD = "benchmark password"  # noqa: S105 - a throwaway account of the benchmark
CHUNK = 1024 * 1024
PARTS_IN_FLIGHT = 4


def write_wav(path: Path, size_mb: int) -> str:
    """A 48 kHz stereo 16-bit WAV of about `size_mb` MiB (pseudo-random samples, so nothing compresses); its sha256."""
    data_bytes = size_mb * CHUNK - 44
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, 48_000, 48_000 * 4, 4, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    digest = hashlib.sha256(header)
    block = os.urandom(CHUNK)
    with path.open("wb") as out:
        out.write(header)
        remaining = data_bytes
        while remaining:
            piece = block[: min(CHUNK, remaining)]
            out.write(piece)
            digest.update(piece)
            remaining -= len(piece)
    return digest.hexdigest()


async def gql(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = (await client.post("/graphql", json={"query": query, "variables": variables or {}})).json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk


async def raw_s3(settings: Settings, path: Path, part_size: int) -> float:
    session = aioboto3.Session()
    async with session.client(
        "s3",
        endpoint_url=settings.s3.endpoint_url,
        aws_access_key_id=settings.s3.access_key,
        aws_secret_access_key=settings.s3.secret_key.get_secret_value(),
        region_name=settings.s3.region,
    ) as s3:
        key = f"bench/raw-{uuid.uuid4().hex}"
        started = time.perf_counter()
        upload_id = (await s3.create_multipart_upload(Bucket=settings.s3.bucket, Key=key))["UploadId"]
        slots = asyncio.Semaphore(PARTS_IN_FLIGHT)
        tasks = []

        async def send(number: int, body: bytes) -> dict[str, Any]:
            try:
                answer = await s3.upload_part(
                    Bucket=settings.s3.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
                )
                return {"PartNumber": number, "ETag": answer["ETag"]}
            finally:
                slots.release()

        with path.open("rb") as f:
            number = 0
            while body := await asyncio.to_thread(f.read, part_size):
                number += 1
                await slots.acquire()
                tasks.append(asyncio.create_task(send(number, body)))
        parts = await asyncio.gather(*tasks)
        await s3.complete_multipart_upload(
            Bucket=settings.s3.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": list(parts)}
        )
        elapsed = time.perf_counter() - started
        await s3.delete_object(Bucket=settings.s3.bucket, Key=key)
        return elapsed


async def via_upload_media(client: httpx.AsyncClient, case_id: str, path: Path, size_bytes: int, sha256: str) -> float:
    boundary = uuid.uuid4().hex
    operations = {
        "query": "mutation($c: ID!, $f: Upload!) { uploadMedia(caseId: $c, file: $f) { id sha256 } }",
        "variables": {"c": case_id, "f": None},
    }
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="operations"\r\n\r\n{json.dumps(operations)}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="map"\r\n\r\n{json.dumps({"0": ["variables.f"]})}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="0"; filename="big.wav"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        async for chunk in file_chunks(path):
            yield chunk
        yield tail

    started = time.perf_counter()
    answer = await client.post(
        "/graphql",
        content=body(),
        headers={
            "content-type": f"multipart/form-data; boundary={boundary}",
            "content-length": str(len(head) + size_bytes + len(tail)),
        },
    )
    elapsed = time.perf_counter() - started
    media = answer.json()["data"]["uploadMedia"]
    assert media["sha256"] == sha256, media
    return elapsed


async def via_resumable(client: httpx.AsyncClient, case_id: str, path: Path, size_bytes: int, sha256: str) -> float:
    started = time.perf_counter()
    upload = (
        await gql(
            client,
            'mutation($c: ID!, $s: Float!, $h: String) { startUpload(caseId: $c, filename: "big.wav", '
            "sizeBytes: $s, sha256: $h) { uploadId partSize parts { number url } } }",
            {"c": case_id, "s": float(size_bytes), "h": sha256},
        )
    )["startUpload"]
    part_size = int(upload["partSize"])
    slots = asyncio.Semaphore(PARTS_IN_FLIGHT)

    async def put(number: int, url: str) -> None:
        async with slots:
            with path.open("rb") as f:
                f.seek((number - 1) * part_size)
                body = await asyncio.to_thread(f.read, part_size)
            async with httpx.AsyncClient(timeout=300) as s3:
                answer = await s3.put(url, content=body)
                answer.raise_for_status()

    await asyncio.gather(*(put(p["number"], p["url"]) for p in upload["parts"]))
    media = (
        await gql(client, "mutation($u: ID!) { completeUpload(uploadId: $u) { sha256 } }", {"u": upload["uploadId"]})
    )["completeUpload"]
    assert media["sha256"] == sha256, media
    return time.perf_counter() - started


def peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def measure(settings: Settings, base_url: str, path: Path, sha256: str, api_pid: int) -> list[str]:
    size_bytes = path.stat().st_size  # noqa: ASYNC240 - once, before any timing
    size_mb = size_bytes / CHUNK
    lines = []
    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        token = (
            await gql(
                client,
                "mutation($e: String!, $p: String!) { login(email: $e, password: $p) { accessToken } }",
                {"e": EMAIL, "p": PASSWORD},
            )
        )["login"]["accessToken"]
        client.headers["Authorization"] = f"Bearer {token}"

        async def case(title: str) -> str:
            return str((await gql(client, f'mutation {{ createCase(title: "{title}") {{ id }} }}'))["createCase"]["id"])

        idle = peak_memory_mb(api_pid)
        raw = await raw_s3(settings, path, settings.uploads.resumable_part_bytes)
        lines.append(f"  raw aioboto3 multipart ({PARTS_IN_FLIGHT} parts in flight): {size_mb / raw:.0f} MiB/s")
        multipart = await via_upload_media(client, await case("multipart"), path, size_bytes, sha256)
        after_multipart = peak_memory_mb(api_pid)
        lines.append(
            f"  uploadMedia (streamed, hashed, probed): {size_mb / multipart:.0f} MiB/s = {raw / multipart:.2f} of raw"
        )
        resumable = await via_resumable(client, await case("resumable"), path, size_bytes, sha256)
        lines.append(
            f"  resumable (parts to presigned URLs, then completeUpload re-hashes): "
            f"{size_mb / resumable:.0f} MiB/s = {raw / resumable:.2f} of raw"
        )
    lines.append(
        f"  API process peak memory (VmHWM): {idle:.0f} MB once started, {after_multipart:.0f} MB after uploadMedia, "
        f"{peak_memory_mb(api_pid):.0f} MB after the resumable upload"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()

    with local_aima("aima-bench-upload-", max_upload_bytes=64 * 1024**3) as aima:
        settings = aima.settings
        asyncio.run(create_account(settings, EMAIL, PASSWORD, Role.USER))
        path = aima.root / "big.wav"
        sha256 = write_wav(path, args.size_mb)
        base_url, api = aima.start_api(AIMA_MAX_UPLOAD_BYTES=str(settings.max_upload_bytes))
        lines = asyncio.run(measure(settings, base_url, path, sha256, api.pid))
    print(f"one {args.size_mb} MiB WAV file, API and S3 (SeaweedFS) on this machine")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
