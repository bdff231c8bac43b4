"""The operator's reader of retraining reports (operator/training_reports.py), against rclone's
real S3 server: Signature V4 from requests-aws4auth is what the server checks, so a wrong key is
refused as on AWS or MinIO."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from support.ports import free_port
from support.s3 import S3Server
from switchboard.operator.api.modeltraining import ModelTrainingSpec
from switchboard.operator.api.validation import validate_spec
from switchboard.operator.training_reports import Credentials, ReportError, ReportReader


def spec(endpoint: str) -> ModelTrainingSpec:
    return validate_spec(
        ModelTrainingSpec,
        {
            "agentRef": "shop",
            "data": {"baseUri": "s3://models/d/b.csv", "heldoutUri": "s3://models/d/h.csv"},
            "outputPrefix": "s3://models/runs",
            "storage": {"endpoint": endpoint, "credentialsSecretRef": {"name": "storage"}},
            "rollout": {"weight": 0},
        },
    )


def secret(access: str, key: str) -> dict[str, Any]:
    encode = lambda v: base64.b64encode(v.encode()).decode()  # noqa: E731
    return {
        "metadata": {"namespace": "shop", "name": "storage"},
        "data": {"accessKeyId": encode(access), "secretAccessKey": encode(key)},
    }


def reader(s3: S3Server, access: str | None = None, key: str | None = None) -> ReportReader:
    credentials = Credentials.from_secret(
        secret(access or s3.access_key, key or s3.secret_key), "accessKeyId", "secretAccessKey"
    )
    return ReportReader(spec(s3.endpoint), credentials)


def test_reads_a_json_object_and_says_none_for_a_missing_one(s3_server: S3Server) -> None:
    uri = s3_server.put("reports-test/run-1/error.json", '{"reason": "BadData", "message": "m"}')
    assert reader(s3_server).json(uri) == {"reason": "BadData", "message": "m"}
    assert reader(s3_server).json("s3://models/reports-test/run-2/report.json") is None


def test_wrong_keys_are_refused_with_the_servers_code(s3_server: S3Server) -> None:
    uri = s3_server.put("reports-test/run-3/error.json", "{}")
    with pytest.raises(ReportError, match=r"HTTP 403"):
        reader(s3_server, key="not-the-secret").json(uri)


def test_what_is_not_a_report_is_named(s3_server: S3Server) -> None:
    not_json = s3_server.put("reports-test/run-4/report.json", "<html>")
    with pytest.raises(ReportError, match=r"run-4/report.json: not JSON"):
        reader(s3_server).report(not_json)
    wrong = s3_server.put("reports-test/run-5/report.json", '{"run": "x"}')
    with pytest.raises(ReportError, match=r"run-5/report.json: not a training report: "):
        reader(s3_server).report(wrong)


def test_storage_down_and_missing_keys_are_errors_not_crashes() -> None:
    down = ReportReader(spec(f"http://127.0.0.1:{free_port()}"), None)
    with pytest.raises(ReportError, match=r"s3://models/runs/r/report.json \(endpoint http"):
        down.json("s3://models/runs/r/report.json")
    with pytest.raises(ReportError, match=r"Secret shop/storage has no key 'secretAccessKey'"):
        Credentials.from_secret(
            {"metadata": {"namespace": "shop", "name": "storage"}, "data": {"accessKeyId": "eA=="}},
            "accessKeyId",
            "secretAccessKey",
        )
