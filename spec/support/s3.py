"""A real S3 endpoint for tests: moto's server in a subprocess, on a free local port.

    with s3_endpoint() as s3:          # or the pytest fixture `s3_server`
        s3.store                       # the store description objects.open_store takes

The server is started, polled until it answers, given a bucket (with boto3), and killed at the
end.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

# Random per test run (moto accepts any): a secret that also stood in this file's source would
# be found by the tests that search a host's files for leaked secrets.
ACCESS_KEY, SECRET_KEY = f"access-{secrets.token_hex(8)}", f"secret-{secrets.token_hex(16)}"
REGION = "us-east-1"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    region: str

    @property
    def store(self) -> dict[str, str]:
        """The store description of the bucket (lib/host/objects.py)."""
        return {"kind": "s3", "endpoint": self.endpoint, "region": self.region,
                "bucket": self.bucket, "access_key": self.access_key,
                "secret_key": self.secret_key}

    def client(self) -> Any:
        """A boto3 S3 client of the server."""
        import boto3  # type: ignore[import-untyped]

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, with an error status
    except OSError:
        return False


@contextlib.contextmanager
def s3_endpoint(bucket: str = "imagecp-test", port: int | None = None) -> Iterator[S3Server]:
    """Run a moto S3 server with one bucket for the duration of the block (on `port`, or a
    free one)."""
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not _answers(endpoint):
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"moto server did not start: {log.read()[-2000:]!r}")
                time.sleep(0.05)
            s3 = S3Server(endpoint, bucket, ACCESS_KEY, SECRET_KEY, REGION)
            s3.client().create_bucket(Bucket=bucket)
            yield s3
        finally:
            server.kill()
            server.wait()


@pytest.fixture
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server with an empty bucket, for one test."""
    with s3_endpoint() as s3:
        yield s3
