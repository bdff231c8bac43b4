"""Model artifacts in S3-compatible object storage: `s3://bucket/prefix` → a verified local copy.

A replica calls `resolve()` at start: the objects under the prefix are downloaded into a
staging directory of the local cache (`$SWITCHBOARD_MODEL_CACHE`, default
`/tmp/switchboard-models`), their sha256 checked against the artifact's `manifest.json`, and the
directory renamed into place, so a half-downloaded or corrupt model is never loaded. A later
start whose cached copy matches the bucket's listing (keys, sizes, ETags) and still verifies
downloads nothing. Any failure raises `ModelStoreError` naming the URI (and the file, with the
expected and actual checksums): in a Serve deployment's constructor that fails the replica, and
the application reports DEPLOY_FAILED with the message.

`push()` uploads an artifact directory, manifest last, so a reader never finds a manifest
whose files are not all there yet.

S3 is spoken by boto3 (the AWS SDK): endpoint override and path-style addressing for
S3-compatible servers, the standard credential chain, multipart transfers, retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from .config import MODEL_STORE_SCHEME, NLU_MANIFEST, ModelStorageConfig, is_remote
from .nlu.artifact import ArtifactError, read_manifest, sha256_file

log = logging.getLogger("switchboard.model_store")

SCHEME = MODEL_STORE_SCHEME
CACHE_ENV = "SWITCHBOARD_MODEL_CACHE"
DEFAULT_CACHE = "/tmp/switchboard-models"
MANIFEST = NLU_MANIFEST
# The cached copy's record of the listing it was downloaded from (not part of the artifact).
LISTING = ".switchboard-listing.json"


class ModelStoreError(ArtifactError):
    """A remote model that cannot be fetched: unreachable, missing, incomplete or corrupt."""


def parse_uri(uri: str) -> tuple[str, str]:
    """(bucket, key prefix ending in `/`, or empty for the bucket's root)."""
    if not is_remote(uri):
        raise ModelStoreError(f"{uri}: not an s3:// URI")
    bucket, _, prefix = uri.removeprefix(SCHEME).partition("/")
    if not bucket:
        raise ModelStoreError(f"{uri}: no bucket in the URI (s3://bucket/prefix)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def client(storage: ModelStorageConfig | None = None, endpoint: str | None = None) -> Any:
    """A boto3 S3 client for `storage` (or the standard AWS environment, `endpoint` overriding
    the endpoint); path-style addressing whenever an endpoint is given (MinIO, Ceph, rclone)."""
    import boto3
    from botocore.config import Config

    storage = storage or ModelStorageConfig()
    endpoint = endpoint or storage.endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    kwargs: dict[str, Any] = {}
    for arg, env in (
        ("aws_access_key_id", storage.access_key_id_env),
        ("aws_secret_access_key", storage.secret_access_key_env),
    ):
        if env:
            value = os.environ.get(env)
            if not value:
                raise ModelStoreError(
                    f"environment variable {env} (model storage credentials, from the Secret in "
                    "spec.modelStorage.credentialsSecretRef) is not set"
                )
            kwargs[arg] = value
    region = storage.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    config = Config(
        s3={"addressing_style": "path"} if endpoint else {},
        retries={"mode": "standard", "max_attempts": 5},
        connect_timeout=10,
        read_timeout=60,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or "us-east-1",
        config=config,
        **kwargs,
    )


def _where(uri: str, s3: Any) -> str:
    return f"{uri} (endpoint {s3.meta.endpoint_url})"


def _listing(uri: str, s3: Any, what: str = "the model") -> dict[str, dict[str, Any]]:
    """Relative path → {size, etag} of every object under the URI's prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = parse_uri(uri)
    objects: dict[str, dict[str, Any]] = {}
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if not rel or rel.endswith("/"):
                    continue  # directory markers
                parts = PurePosixPath(rel).parts
                if ".." in parts or rel.startswith("/"):
                    raise ModelStoreError(f"{uri}: refusing object key {obj['Key']!r}")
                objects[rel] = {"size": obj["Size"], "etag": obj.get("ETag", "")}
    except (ClientError, BotoCoreError) as exc:
        raise _store_error(uri, s3, f"cannot list {what}", exc) from None
    return objects


def _store_error(uri: str, s3: Any, doing: str, exc: Exception) -> ModelStoreError:
    """One message shape for every S3 failure: where, what was being done, the store's code."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return ModelStoreError(
            f"{_where(uri, s3)}: {doing}: {error.get('Code')}: {error.get('Message') or exc}"
        )
    return ModelStoreError(f"{_where(uri, s3)}: {doing}: {exc}")


def verify_checksums(uri: str, root: Path, *, require_manifest: bool) -> None:
    """Compare every file in the manifest's `files` table with its sha256."""
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        if require_manifest:
            raise ModelStoreError(
                f"{uri}: no {MANIFEST} under this prefix: not a model artifact "
                "(upload one with `switchboard nlu push DIR URI`)"
            )
        log.warning("%s: no %s, so no checksums to verify (sizes checked only)", uri, MANIFEST)
        return
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8")).get("files")
    except (ValueError, AttributeError) as exc:
        raise ModelStoreError(f"{uri}: {MANIFEST} is unreadable: {exc}") from None
    if not isinstance(files, Mapping):
        raise ModelStoreError(f"{uri}: {MANIFEST} has no 'files' table of checksums")
    for name, expected in sorted(files.items()):
        path = root / name
        if not path.is_file():
            raise ModelStoreError(
                f"{uri}: incomplete model artifact: {name} is listed in {MANIFEST} "
                "but is not in the bucket"
            )
        actual = sha256_file(path)
        if actual != expected:
            raise ModelStoreError(
                f"{uri}: corrupt model artifact: {name} has sha256 {actual}, "
                f"{MANIFEST} says {expected}"
            )


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def cache_dir(uri: str, endpoint: str | None, root: Path | None = None) -> Path:
    key = hashlib.sha256(f"{endpoint or ''}\n{uri}".encode()).hexdigest()[:24]
    return (root or cache_root()) / key


def _cached(uri: str, dest: Path, listing: dict[str, dict[str, Any]], manifest: bool) -> bool:
    try:
        recorded = json.loads((dest / LISTING).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if recorded != listing:
        return False
    try:
        verify_checksums(uri, dest, require_manifest=manifest)
    except ModelStoreError as exc:
        log.warning("%s: cached copy %s is stale or damaged, downloading again: %s", uri, dest, exc)
        return False
    return all((dest / rel).stat().st_size == obj["size"] for rel, obj in listing.items())


def fetch(
    uri: str,
    storage: ModelStorageConfig | None = None,
    *,
    endpoint: str | None = None,
    cache: Path | None = None,
    require_manifest: bool = True,
) -> Path:
    """The local, verified copy of the model at `uri` (downloaded unless the cache has it)."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = client(storage, endpoint)
    listing = _listing(uri, s3)
    if not listing:
        raise ModelStoreError(
            f"{_where(uri, s3)}: no objects under this prefix: the model is missing "
            "(check the URI, or upload it with `switchboard nlu push DIR URI`)"
        )
    if require_manifest and MANIFEST not in listing:
        raise ModelStoreError(
            f"{_where(uri, s3)}: no {MANIFEST} under this prefix: not a model artifact, or an "
            "upload still in progress (`switchboard nlu push` writes the manifest last)"
        )
    dest = cache_dir(uri, s3.meta.endpoint_url, cache)
    if _cached(uri, dest, listing, require_manifest):
        log.info("%s: cache hit at %s", uri, dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    bucket, prefix = parse_uri(uri)
    try:
        log.info("%s: downloading %d objects into %s", uri, len(listing), dest)
        for rel, obj in sorted(listing.items()):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                s3.download_file(bucket, prefix + rel, str(target))
            except (ClientError, BotoCoreError) as exc:
                raise _store_error(uri, s3, f"cannot download {rel}", exc) from None
            size = target.stat().st_size
            if size != obj["size"]:
                raise ModelStoreError(
                    f"{uri}: truncated download: {rel} has {size} bytes, the bucket lists "
                    f"{obj['size']}"
                )
        verify_checksums(uri, staging, require_manifest=require_manifest)
        (staging / LISTING).write_text(json.dumps(listing, sort_keys=True), encoding="utf-8")
        for p in [staging, *staging.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _publish(staging: Path, dest: Path) -> None:
    """Rename the verified staging directory into place (atomic); if another replica on this
    node won the race, its copy (verified the same way) is kept."""
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old.{os.getpid()}")
        with contextlib.suppress(OSError):  # another replica may be replacing it too
            dest.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        staging.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def resolve(
    path: str,
    storage: ModelStorageConfig | None = None,
    *,
    require_manifest: bool = True,
    endpoint: str | None = None,
) -> str:
    """A local model directory for `path`: itself, or the verified cache of an s3:// URI.
    Failures are logged (ERROR) before they are raised, so a replica's log says why it died."""
    if not is_remote(path):
        return path
    try:
        return str(fetch(path, storage, endpoint=endpoint, require_manifest=require_manifest))
    except ModelStoreError as exc:
        log.error("model fetch failed: %s", exc)
        raise


def push(directory: str | Path, uri: str, *, endpoint: str | None = None) -> int:
    """Upload a verified NLU artifact directory to `uri`, manifest last. Returns the file count."""
    from botocore.exceptions import BotoCoreError, ClientError

    root = Path(directory)
    read_manifest(root, verify=True)  # never publish a corrupt or incomplete artifact
    bucket, prefix = parse_uri(uri)
    s3 = client(None, endpoint)
    files = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST
    )
    for rel in [*files, MANIFEST]:
        try:
            s3.upload_file(str(root / rel), bucket, prefix + rel)
        except (ClientError, BotoCoreError) as exc:
            raise ModelStoreError(f"{_where(uri, s3)}: cannot upload {rel}: {exc}") from None
        except Exception as exc:  # boto3's S3UploadFailedError wraps ClientError
            raise ModelStoreError(f"{_where(uri, s3)}: cannot upload {rel}: {exc}") from None
    return len(files) + 1


# --- single objects (retraining data, reports) ------------------------------------------------


def parse_object_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` naming one object."""
    bucket, prefix = parse_uri(uri)
    if not prefix or uri.endswith("/"):
        raise ModelStoreError(f"{uri}: not an object URI (s3://bucket/key, no trailing /)")
    return bucket, prefix.removesuffix("/")


def read_object(uri: str, *, endpoint: str | None = None) -> bytes:
    """The bytes of one object; a missing one raises `ModelStoreError` naming URI and endpoint."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_object_uri(uri)
    s3 = client(None, endpoint)
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as exc:
        raise _store_error(uri, s3, "cannot read the object", exc) from None
    return body


def list_objects(uri: str, *, endpoint: str | None = None, suffix: str = "") -> list[str]:
    """The `s3://` URIs of the objects under a prefix whose key ends in `suffix`, in key order."""
    s3 = client(None, endpoint)
    bucket, prefix = parse_uri(uri)
    return [
        f"{SCHEME}{bucket}/{prefix}{rel}"
        for rel in sorted(_listing(uri, s3, "the prefix"))
        if rel.endswith(suffix)
    ]


def write_object(uri: str, body: bytes, *, endpoint: str | None = None) -> None:
    """Write one object (small: a report), replacing any object of that key."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_object_uri(uri)
    s3 = client(None, endpoint)
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    except (ClientError, BotoCoreError) as exc:
        raise _store_error(uri, s3, "cannot write the object", exc) from None


def object_exists(uri: str, *, endpoint: str | None = None) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_object_uri(uri)
    s3 = client(None, endpoint)
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise _store_error(uri, s3, "cannot look up the object", exc) from None
    except BotoCoreError as exc:
        raise _store_error(uri, s3, "cannot look up the object", exc) from None
    return True
