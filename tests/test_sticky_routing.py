"""Conversations stick to one revision (pure): the router's session hash, the revision header a
client echoes, and `switchboard chat` echoing it (docs/rollouts.md, "Conversations stick to one
revision"). The same on a real Ray Serve: tests/test_rollout_serving.py."""

from __future__ import annotations

import http.server
import io
import itertools
import json
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from switchboard.serving import chat
from switchboard.serving import config as contract
from switchboard.serving.router import BUCKETS, pick_revision, session_bucket

REVISION = contract.REVISION_HEADER
SESSIONS = [f"conv-{i}" for i in range(2000)]


def router(weight: int, *, testers: bool = False) -> contract.RouterConfig:
    """The router of a canary at `weight`% (as `serve_config` renders it: stable first)."""
    return contract.RouterConfig(
        agent="acme",
        revisions=[
            contract.RevisionRoute(
                revision="stable1", app_name="acme-stable1", weight=100 - weight
            ),
            contract.RevisionRoute(revision="cand2", app_name="acme-cand2", weight=weight),
        ],
        testers=[contract.TesterMatch(name="x-canary", exact="true")] if testers else [],
        tester_revision="cand2" if testers else None,
    )


def assignment(weight: int, sessions: list[str] = SESSIONS) -> dict[str, str]:
    config = router(weight)
    return {s: pick_revision(config, {}, random.Random(), session_id=s).revision for s in sessions}


def test_the_bucket_is_a_stable_hash() -> None:
    """sha256, not Python's salted `hash`: every router replica and release agrees, so a router
    restart or upgrade mid-rollout moves no conversation."""
    assert [session_bucket(s) for s in ("conv-0", "conv-1", "terminal-1a2b3c4d", "demo-1")] == [
        54,
        94,
        76,
        7,
    ]
    assert all(0 <= session_bucket(s) < BUCKETS for s in SESSIONS)
    assert len({session_bucket(s) for s in SESSIONS}) == BUCKETS  # the whole scale is used


def test_every_turn_of_a_session_gets_the_same_revision_whatever_the_rng() -> None:
    config = router(50)
    for session in SESSIONS[:200]:
        picks = {
            pick_revision(config, {}, random.Random(seed), session_id=session).revision
            for seed in range(5)
        }
        assert len(picks) == 1, session


def test_half_the_conversations_at_50_percent() -> None:
    picked = assignment(50, SESSIONS[:200])
    share = sum(r == "cand2" for r in picked.values()) / 200
    assert 0.4 <= share <= 0.6, share


@pytest.mark.parametrize("weight", [10, 25, 50, 75])
def test_the_split_follows_the_weight(weight: int) -> None:
    share = sum(r == "cand2" for r in assignment(weight).values()) / len(SESSIONS)
    assert abs(share - weight / 100) < 0.04, share


def test_raising_the_weight_only_moves_conversations_from_stable_to_candidate() -> None:
    steps = [0, 10, 25, 50, 100]
    assignments = [assignment(w) for w in steps]
    assert set(assignments[0].values()) == {"stable1"}
    assert set(assignments[-1].values()) == {"cand2"}
    for before, after in itertools.pairwise(assignments):
        back = [s for s in SESSIONS if before[s] == "cand2" and after[s] == "stable1"]
        assert back == []
        assert sum(r == "cand2" for r in after.values()) > sum(
            r == "cand2" for r in before.values()
        )


def test_the_echoed_revision_wins_while_it_is_served() -> None:
    """A conversation begun on the candidate stays there even where the hash would say stable
    (e.g. after the weight went down), and vice versa."""
    for weight in (0, 10, 50, 100):
        config = router(weight)
        for session in SESSIONS[:50]:
            for revision in ("stable1", "cand2"):
                picked = pick_revision(
                    config, {REVISION: revision}, random.Random(), session_id=session
                )
                assert picked.revision == revision


def test_a_revision_no_longer_served_falls_into_the_split() -> None:
    config = router(50)
    by_hash = assignment(50, SESSIONS[:100])
    for session, revision in by_hash.items():
        headers = {REVISION: "gone99"}  # rolled back or promoted away
        assert pick_revision(config, headers, random.Random(), session_id=session).revision == (
            revision
        )


def test_testers_reach_the_candidate_unless_they_echo_a_revision() -> None:
    config = router(0, testers=True)
    for session in SESSIONS[:50]:
        tester = {"x-canary": "true"}
        assert pick_revision(config, tester, random.Random(), session_id=session).revision == (
            "cand2"
        )
        pinned = {**tester, REVISION: "stable1"}
        assert pick_revision(config, pinned, random.Random(), session_id=session).revision == (
            "stable1"
        )
        # An echoed revision that is gone does not hide the tester match.
        stale = {**tester, REVISION: "gone99"}
        assert pick_revision(config, stale, random.Random(), session_id=session).revision == (
            "cand2"
        )


def test_without_a_session_id_the_weights_draw_at_random() -> None:
    rng = random.Random(3)
    picks = [pick_revision(router(50), {}, rng).revision for _ in range(2000)]
    assert 0.45 < picks.count("cand2") / len(picks) < 0.55


def test_weights_that_do_not_add_up_to_100_still_split_in_proportion() -> None:
    config = contract.RouterConfig(
        agent="acme",
        revisions=[
            contract.RevisionRoute(revision="a", app_name="acme-a", weight=30),
            contract.RevisionRoute(revision="b", app_name="acme-b", weight=10),
        ],
    )
    picks = [pick_revision(config, {}, random.Random(), session_id=s).revision for s in SESSIONS]
    assert abs(picks.count("b") / len(picks) - 0.25) < 0.04
    zero = config.model_copy(
        update={"revisions": [r.model_copy(update={"weight": 0}) for r in config.revisions]}
    )
    assert pick_revision(zero, {}, random.Random(), session_id="conv-1").revision == "a"


# --------------------------------------------------------------------------------------------
# `switchboard chat` echoes the revision of its conversation


class _Agent(http.server.BaseHTTPRequestHandler):
    """A stub agent on 127.0.0.1 that records the header each turn brings: this checks the
    terminal loop's bookkeeping only; `chat.send` against the real agent on Ray Serve is in
    tests/test_rollout_serving.py."""

    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Agent.seen.append({"header": self.headers.get(REVISION), **body})
        served = self.headers.get(REVISION) or "cand2"
        answer = {"reply": "ok", "intent": None, "trace_id": "0" * 32, "revision": served}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def stub_agent() -> Iterator[str]:
    _Agent.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_switchboard_chat_echoes_the_revision_of_the_first_reply(
    stub_agent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert chat.chat(stub_agent, "sess-1", stdin=io.StringIO("hi\nwhere is it\nthanks\n")) == 0
    assert [(s["session_id"], s["header"]) for s in _Agent.seen] == [
        ("sess-1", None),
        ("sess-1", "cand2"),
        ("sess-1", "cand2"),
    ]
    assert "revision=cand2" in capsys.readouterr().out


def test_send_sets_the_revision_header_only_when_given(stub_agent: str) -> None:
    chat.send(stub_agent, "s", "hello")
    chat.send(stub_agent, "s", "hello", revision="stable1")
    assert [s["header"] for s in _Agent.seen] == [None, "stable1"]
