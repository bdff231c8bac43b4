"""Edge authentication of customers (SupportAgent `spec.auth`): the agent's own JWT verifier
against real signed tokens and a real JWKS server on 127.0.0.1, and the Istio security objects
rendered when Istio verifies them instead, validated against the upstream CRDs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from switchboard.operator.api.supportagent import SupportAgentSpec
from switchboard.operator.api.validation import SpecError, validate_spec
from switchboard.operator.render import Parent, render_agent
from switchboard.operator.render.edge_auth import CUSTOMER_PATHS
from switchboard.operator.render.serve_config import JWKS_FILE, auth_config
from switchboard.serving import config as contract
from switchboard.serving.auth import Authenticator, AuthError, KeySet

REPO = Path(__file__).resolve().parents[1]
ISSUER = "https://login.acme.example.com/"
AUDIENCE = "acme-support"

# --------------------------------------------------------------------------------------------
# Keys, tokens and a JWKS server


class Signer:
    """A private key and its public JWK under one `kid`."""

    def __init__(self, kid: str, algorithm: str = "RS256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        if algorithm == "RS256":
            self.key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            self.jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        self.jwk.update({"kid": kid, "use": "sig", "alg": algorithm})

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "customer-42",
            "iat": now,
            "exp": now + 300,
        }
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.key, algorithm=self.algorithm, headers={"kid": self.kid})


class JwksServer:
    """Serves `keys` as a JWKS document at `url`; counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer("rsa-2025")


@pytest.fixture
def jwks(rsa_signer: Signer) -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys = [rsa_signer.jwk]
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**overrides: Any) -> contract.AuthConfig:
    base: dict[str, Any] = {"issuer": ISSUER, "audiences": [AUDIENCE, "other-app"]}
    return contract.AuthConfig(**{**base, **overrides})


def authenticator(server: JwksServer, clock: Clock | None = None, **cfg: Any) -> Authenticator:
    keys = KeySet(uri=server.url, clock=clock or Clock())
    return Authenticator(config(jwks_uri=server.url, **cfg), keys)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def reason_of(auth: Authenticator, header: str | None) -> str:
    with pytest.raises(AuthError) as caught:
        auth.verify(header)
    assert caught.value.status == 401
    assert "Bearer" in caught.value.www_authenticate
    return caught.value.reason


# --------------------------------------------------------------------------------------------
# The agent verifies tokens itself (mode verify)


def test_a_valid_token_gives_the_customer_id(jwks: JwksServer, rsa_signer: Signer) -> None:
    auth = authenticator(jwks)
    assert auth.verify(bearer(rsa_signer.token())) == "customer-42"
    # A second audience of the list, and the keys served from the cache.
    assert auth.verify(bearer(rsa_signer.token(aud=["x", "other-app"]))) == "customer-42"
    assert jwks.fetches == 1


def test_the_customer_id_claim_is_configurable(jwks: JwksServer, rsa_signer: Signer) -> None:
    auth = authenticator(jwks, customer_id_claim="customer_id")
    assert auth.verify(bearer(rsa_signer.token(customer_id="c-7"))) == "c-7"
    assert reason_of(auth, bearer(rsa_signer.token())) == "missing_claim"


def test_es256_keys_verify(jwks: JwksServer) -> None:
    signer = Signer("ec-1", "ES256")
    jwks.keys.append(signer.jwk)
    assert authenticator(jwks).verify(bearer(signer.token(sub="ec-customer"))) == "ec-customer"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"iss": "https://evil.example.com/"}, "wrong_issuer"),
        ({"aud": "someone-else"}, "wrong_audience"),
        ({"exp": int(time.time()) - 120}, "expired"),
        ({"nbf": int(time.time()) + 600}, "not_yet_valid"),
        ({"exp": None}, "missing_claim"),
        ({"aud": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
    ],
)
def test_invalid_claims_are_refused(
    jwks: JwksServer, rsa_signer: Signer, claims: dict[str, Any], reason: str
) -> None:
    assert reason_of(authenticator(jwks), bearer(rsa_signer.token(**claims))) == reason


def test_expiry_has_a_small_leeway(jwks: JwksServer, rsa_signer: Signer) -> None:
    just_expired = rsa_signer.token(exp=int(time.time()) - 5)
    assert authenticator(jwks).verify(bearer(just_expired)) == "customer-42"
    assert reason_of(authenticator(jwks, leeway_seconds=0), bearer(just_expired)) == "expired"


def test_a_bad_signature_is_refused(jwks: JwksServer, rsa_signer: Signer) -> None:
    impostor = Signer(rsa_signer.kid)  # another key claiming the listed key id
    auth = authenticator(jwks)
    assert reason_of(auth, bearer(impostor.token())) == "bad_signature"
    header, payload, signature = rsa_signer.token().split(".")
    tampered = jwt.utils.base64url_encode(
        json.dumps({**json.loads(jwt.utils.base64url_decode(payload)), "sub": "admin"}).encode()
    ).decode()
    assert reason_of(auth, bearer(f"{header}.{tampered}.{signature}")) == "bad_signature"


def test_symmetric_and_unsigned_tokens_are_refused(jwks: JwksServer) -> None:
    auth = authenticator(jwks)
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": int(time.time()) + 60}
    hs256 = jwt.encode(claims, "secret" * 8, algorithm="HS256", headers={"kid": "rsa-2025"})
    assert reason_of(auth, bearer(hs256)) == "unsupported_algorithm"
    unsigned = jwt.encode(claims, None, algorithm="none")
    assert reason_of(auth, bearer(unsigned)) == "unsupported_algorithm"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic dXNlcjpwYXNz", "malformed_token"),
        ("Bearer ", "malformed_token"),
        ("Bearer not-a-jwt", "malformed_token"),
    ],
)
def test_no_token_or_no_jwt_is_refused(jwks: JwksServer, header: str | None, reason: str) -> None:
    assert reason_of(authenticator(jwks), header) == reason


def test_an_unknown_key_id_is_refused_after_one_refetch(jwks: JwksServer) -> None:
    clock = Clock()
    auth = authenticator(jwks, clock)
    stranger = Signer("not-listed")
    assert reason_of(auth, bearer(stranger.token())) == "unknown_key"
    assert jwks.fetches == 1
    # More made-up key ids within the refresh interval do not reach the identity provider.
    for _ in range(5):
        assert reason_of(auth, bearer(stranger.token())) == "unknown_key"
    assert jwks.fetches == 1


def test_a_key_rotation_is_picked_up(jwks: JwksServer, rsa_signer: Signer) -> None:
    clock = Clock()
    auth = authenticator(jwks, clock)
    assert auth.verify(bearer(rsa_signer.token())) == "customer-42"
    assert jwks.fetches == 1
    # The issuer rotates: a new key is published, tokens are signed with it.
    rotated = Signer("rsa-2026")
    jwks.keys = [rsa_signer.jwk, rotated.jwk]
    clock.now += 30
    assert auth.verify(bearer(rotated.token(sub="after-rotation"))) == "after-rotation"
    assert jwks.fetches == 2
    # The old key is withdrawn: once the cache ages out, its tokens stop verifying.
    jwks.keys = [rotated.jwk]
    assert auth.verify(bearer(rsa_signer.token())) == "customer-42"  # still cached
    clock.now += 301
    assert reason_of(auth, bearer(rsa_signer.token())) == "unknown_key"
    assert auth.verify(bearer(rotated.token())) == "customer-42"


def test_an_unreachable_key_set_refuses_with_its_own_reason(rsa_signer: Signer) -> None:
    server = JwksServer()
    server.stop()
    auth = authenticator(server)
    assert reason_of(auth, bearer(rsa_signer.token())) == "keys_unavailable"


def test_keys_from_a_mounted_secret_file_and_their_rotation(
    tmp_path: Path, rsa_signer: Signer
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_signer.jwk]}))
    auth = Authenticator(config(jwks_path=str(path)))
    assert auth.verify(bearer(rsa_signer.token())) == "customer-42"
    rotated = Signer("rsa-next")
    path.write_text(json.dumps({"keys": [rsa_signer.jwk, rotated.jwk]}))
    assert auth.verify(bearer(rotated.token(sub="c-9"))) == "c-9"


def test_verify_async(jwks: JwksServer, rsa_signer: Signer) -> None:
    auth = authenticator(jwks)
    assert asyncio.run(auth.verify_async(bearer(rsa_signer.token()))) == "customer-42"


# --------------------------------------------------------------------------------------------
# The request's customer, as the mode says


def test_customer_in_verify_mode(jwks: JwksServer, rsa_signer: Signer) -> None:
    required = authenticator(jwks)
    assert required.customer({"Authorization": bearer(rsa_signer.token())}) == "customer-42"
    with pytest.raises(AuthError):
        required.customer({})
    # Anonymous allowed, but a token sent must be valid; a claim header proves nothing here.
    optional = authenticator(jwks, required=False)
    assert optional.customer({contract.CUSTOMER_HEADER: "someone"}) is None
    assert optional.customer({"authorization": bearer(rsa_signer.token(sub="c-1"))}) == "c-1"
    with pytest.raises(AuthError):
        optional.customer({"authorization": bearer(rsa_signer.token(iss="x"))})


def test_customer_in_istio_mode() -> None:
    required = Authenticator(config(mode="istio", jwks_uri="https://login.example.com/jwks"))
    assert required.customer({"X-Switchboard-Customer": "c-3"}) == "c-3"
    with pytest.raises(AuthError) as caught:
        required.customer({"authorization": "Bearer whatever"})
    assert caught.value.reason == "missing_token"
    optional = Authenticator(config(mode="istio", required=False, jwks_uri="https://x/jwks"))
    assert optional.customer({}) is None


# --------------------------------------------------------------------------------------------
# The control plane: spec.auth → AuthConfig, and the Istio security objects

BASE = {"nlu": {"modelUri": "file:///models/nlu/v1"}}
AUTH_URI = {"issuer": ISSUER, "jwksUri": "https://login.acme.example.com/jwks", "audiences": ["a"]}
AUTH_SECRET = {"issuer": ISSUER, "jwksSecret": {"name": "jwks", "key": "keys"}, "audiences": ["a"]}
INGRESS = {"hosts": ["help.example.com"]}


def spec(**fields: Any) -> SupportAgentSpec:
    return validate_spec(SupportAgentSpec, {**BASE, **fields})


def children(agent: SupportAgentSpec, uid: str | None = None) -> dict[str, dict[str, Any]]:
    rendered = render_agent(Parent("SupportAgent", "acme", "support", uid), agent, {})
    return {o["kind"]: o for o in rendered}


@pytest.mark.parametrize(
    "auth",
    [
        {"issuer": ISSUER, "audiences": ["a"]},
        {**AUTH_URI, "jwksSecret": {"name": "jwks", "key": "keys"}},
        {**AUTH_URI, "audiences": []},
        {**AUTH_URI, "jwksUri": "ftp://x"},
    ],
)
def test_invalid_auth_sections_are_refused(auth: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        spec(auth=auth)


def test_auth_defaults() -> None:
    auth = spec(auth=AUTH_URI).auth
    assert auth is not None and auth.required and auth.customer_id_claim == "sub"


def test_istio_verifies_with_ingress_and_a_jwks_uri(schemas: Any) -> None:
    objs = children(spec(auth={**AUTH_URI, "customerIdClaim": "cid"}, ingress=INGRESS), "u-1")
    ra, ap, rs = objs["RequestAuthentication"], objs["AuthorizationPolicy"], objs["RayService"]
    for obj in (ra, ap):
        assert schemas.crd_errors(obj) == []
        assert schemas.metadata_errors(obj) == []
        assert obj["metadata"]["name"] == "acme-customer-auth"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == "u-1"
        # Every Ray pod runs a Serve proxy: the selector takes the head and each worker.
        selector = obj["spec"]["selector"]["matchLabels"]
        cluster = rs["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"]["template"]] + [
            g["template"] for g in cluster["workerGroupSpecs"]
        ]
        for pod in pods:
            assert selector.items() <= pod["metadata"]["labels"].items()
    [rule] = ra["spec"]["jwtRules"]
    assert rule == {
        "issuer": ISSUER,
        "jwksUri": AUTH_URI["jwksUri"],
        "audiences": ["a"],
        "forwardOriginalToken": True,
        "outputClaimToHeaders": [{"header": contract.CUSTOMER_HEADER, "claim": "cid"}],
    }
    assert ap["spec"]["action"] == "DENY"
    spoofed, unauthenticated = ap["spec"]["rules"]
    assert spoofed["when"] == [
        {"key": f"request.headers[{contract.CUSTOMER_HEADER}]", "values": ["*"]}
    ]
    operation = unauthenticated["to"][0]["operation"]
    assert operation == {"ports": [str(contract.SERVE_HTTP_PORT)], "paths": CUSTOMER_PATHS}
    for rule in (spoofed, unauthenticated):
        assert rule["from"] == [{"source": {"notRequestPrincipals": ["*"]}}]
    # What stays reachable without a customer token: pages, probes and the console's own API.
    for path in ("/healthz", "/widget", "/console", "/v1/handoffs", "/v1/handoffs/h-1/claim"):
        assert not any(path == p or path.startswith(p.rstrip("*")) for p in CUSTOMER_PATHS)
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert app["auth"]["mode"] == "istio"
    assert app["auth"]["customer_id_claim"] == "cid"


def test_optional_auth_denies_only_a_forged_customer_header(schemas: Any) -> None:
    ap = children(spec(auth={**AUTH_URI, "required": False}, ingress=INGRESS))[
        "AuthorizationPolicy"
    ]
    assert schemas.crd_errors(ap) == []
    [rule] = ap["spec"]["rules"]
    assert "when" in rule


@pytest.mark.parametrize(
    ("auth", "ingress"), [(AUTH_URI, None), (AUTH_SECRET, None), (AUTH_SECRET, INGRESS)]
)
def test_otherwise_the_agent_verifies(auth: dict[str, Any], ingress: dict[str, Any] | None) -> None:
    agent = spec(auth=auth, ingress=ingress) if ingress else spec(auth=auth)
    objs = children(agent)
    assert "RequestAuthentication" not in objs and "AuthorizationPolicy" not in objs
    config = auth_config(agent)
    assert config is not None and config.mode == "verify"
    if "jwksSecret" in auth:
        assert config.jwks_path == f"{contract.JWKS_DIR}/{JWKS_FILE}"
        cluster = objs["RayService"]["spec"]["rayClusterConfig"]
        pods = [cluster["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in cluster["workerGroupSpecs"]
        ]
        for pod in pods:
            [volume] = [v for v in pod["volumes"] if v["name"] == "jwks"]
            assert volume["secret"]["secretName"] == "jwks"
            assert volume["secret"]["items"] == [{"key": "keys", "path": JWKS_FILE}]
            for container in pod["containers"]:
                mounts = [m for m in container["volumeMounts"] if m["name"] == "jwks"]
                assert mounts == [
                    {"name": "jwks", "mountPath": contract.JWKS_DIR, "readOnly": True}
                ]
    else:
        assert config.jwks_uri == auth["jwksUri"] and config.jwks_path is None


def test_without_auth_the_chat_stays_open() -> None:
    agent = spec(ingress=INGRESS)
    assert auth_config(agent) is None
    assert set(children(agent)) & {"RequestAuthentication", "AuthorizationPolicy"} == set()


def test_cli_render_of_the_secure_example_prints_valid_istio_security_objects(
    schemas: Any,
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "switchboard.operator.cli", "render", "-f", "examples/secure"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = [d for d in yaml.safe_load_all(result.stdout) if d]
    security = [d for d in printed if d["apiVersion"] == "security.istio.io/v1"]
    assert {(d["kind"], d["metadata"]["name"]) for d in security} >= {
        ("RequestAuthentication", "acme-secure-customer-auth"),
        ("AuthorizationPolicy", "acme-secure-customer-auth"),
    }
    for doc in security:
        assert schemas.crd_errors(doc) == []
        assert schemas.metadata_errors(doc) == []


# --- the chat over HTTP ---------------------------------------------------------------------


def test_the_chat_takes_the_customer_from_a_verified_token_only(
    jwks: JwksServer, rsa_signer: Signer, tmp_path: Path
) -> None:
    """On a replica (support.agent_replica) with `auth` in verify mode: no token or a bad one
    is a 401 JSON with `WWW-Authenticate`; a valid one names the customer, whatever the body
    claims."""
    from support.agent_replica import Replica
    from switchboard.serving.workflow.sessions import MemorySessionStore

    running = Replica(MemorySessionStore(3600), tmp_path, auth=config(jwks_uri=jwks.url))
    try:
        body = {"session_id": "s1", "message": "my payment failed", "customer_id": "someone"}
        refused = running.http.post("/v1/chat", json=body)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "missing_token"
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
        expired = bearer(rsa_signer.token(exp=int(time.time()) - 3600))
        answer = running.http.post("/v1/chat", json=body, headers={"Authorization": expired})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "expired"
        valid = {"Authorization": bearer(rsa_signer.token())}
        assert running.http.post("/v1/chat", json=body, headers=valid).status_code == 200
        session = asyncio.run(running.store.get("s1"))
        assert session is not None and session.customer_id == "customer-42"
        # Reading the conversation takes the token too.
        assert running.http.get("/v1/sessions/s1/messages").status_code == 401
        assert running.http.get("/v1/sessions/s1/messages", headers=valid).status_code == 200
    finally:
        running.stop()
