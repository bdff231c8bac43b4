"""Reading a retraining run's report (and, for a failed run, its error) from object storage.

The operator reads with the credentials of the Secret the ModelTraining names, the same the
run's pods got: the operator's own account needs no access to the bucket. A signed GET of one
small object is all it needs, so it speaks S3 with `requests` (already the Kubernetes client's)
and requests-aws4auth's Signature V4 rather than boto3, whose service models would add 30 MB to
the operator image and more to its memory.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from pydantic import ValidationError
from requests_aws4auth import AWS4Auth

from switchboard.serving.training_report import TrainingReport

from .api.modeltraining import ModelTrainingSpec

DEFAULT_REGION = "us-east-1"
TIMEOUT = (5.0, 20.0)  # connect, read
MAX_REPORT_BYTES = 4 * 1024 * 1024


class ReportError(Exception):
    """The object exists but cannot be used, or storage cannot be reached; names the URI."""


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str

    @classmethod
    def from_secret(cls, secret: dict[str, Any], id_key: str, secret_key: str) -> Credentials:
        data = secret.get("data") or {}
        name = f"Secret {secret['metadata']['namespace']}/{secret['metadata']['name']}"
        try:
            return cls(
                base64.b64decode(data[id_key]).decode(), base64.b64decode(data[secret_key]).decode()
            )
        except KeyError as exc:
            raise ReportError(f"{name} has no key {exc.args[0]!r}") from None


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class ReportReader:
    """Reads JSON objects of one ModelTraining's storage."""

    def __init__(self, spec: ModelTrainingSpec, credentials: Credentials | None) -> None:
        storage = spec.storage
        self._region = storage.region or DEFAULT_REGION
        self._endpoint = (storage.endpoint or "").rstrip("/")
        self._auth = (
            AWS4Auth(credentials.access_key_id, credentials.secret_access_key, self._region, "s3")
            if credentials
            else None
        )
        self._where = f"(endpoint {storage.endpoint or 'AWS S3'})"

    def _url(self, bucket: str, key: str) -> str:
        # Path-style on an S3-compatible endpoint (MinIO, Ceph, rclone), virtual-hosted on AWS.
        if self._endpoint:
            return f"{self._endpoint}/{bucket}/{quote(key)}"
        return f"https://{bucket}.s3.{self._region}.amazonaws.com/{quote(key)}"

    def json(self, uri: str) -> dict[str, Any] | None:
        """The object at `uri` parsed as JSON; None when there is none."""
        bucket, key = _split(uri)
        try:
            with requests.get(
                self._url(bucket, key), auth=self._auth, timeout=TIMEOUT, stream=True
            ) as response:
                if response.status_code == 404:
                    return None
                if response.status_code >= 400:
                    code = re.search(r"<Code>([^<]+)</Code>", response.text[:4096])
                    raise ReportError(
                        f"{uri} {self._where}: HTTP {response.status_code}"
                        + (f": {code.group(1)}" if code else "")
                    )
                body = response.raw.read(MAX_REPORT_BYTES + 1, decode_content=True)
        except requests.RequestException as exc:
            raise ReportError(f"{uri} {self._where}: {exc}") from None
        if len(body) > MAX_REPORT_BYTES:
            raise ReportError(f"{uri}: larger than {MAX_REPORT_BYTES} bytes")
        try:
            found = json.loads(body)
        except ValueError as exc:
            raise ReportError(f"{uri}: not JSON ({exc})") from None
        if not isinstance(found, dict):
            raise ReportError(f"{uri}: not a JSON object")
        return found

    def report(self, uri: str) -> TrainingReport | None:
        found = self.json(uri)
        if found is None:
            return None
        try:
            return TrainingReport.model_validate(found)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
            )
            raise ReportError(f"{uri}: not a training report: {problems}") from None
