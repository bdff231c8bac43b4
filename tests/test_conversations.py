"""The demo conversation test set (tests/conversations/), run for real: the quickstart agent as
shipped (examples/quickstart) on an embedded Ray Serve with the demo NLU model trained from
examples/nlu, MiniLM retrieval over the quickstart's knowledge base, tool gateways in front of
the demo orders and ticketing systems — what `make demo` runs. Nothing here is a stand-in.

Also: `switchboard eval-conversations` and `switchboard kb calibrate` as a team would run them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.operator.cli import load_manifests
from switchboard.serving import conversations

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
SUITE = REPO / "tests" / "conversations"
KB_QUESTIONS = REPO / "examples" / "knowledge-base" / "acme-questions.yaml"
# The customer reports of the issue that asked for this suite: each must be in it.
QUOTED = (
    "my payment failed",
    "invoice for my last order",
    "damaged item gets a replacement",
    "cancel, then the order number alone",
    "hi there",
    "thanks, that's all",
)


@pytest.fixture(scope="module")
def demo_agent(serve_manifests: Any) -> Iterator[Any]:
    with serve_manifests(load_manifests([str(QUICKSTART)])) as agent:
        yield agent


@pytest.fixture(scope="module")
def suite_run(demo_agent: Any) -> list[conversations.ConversationResult]:
    suite = conversations.load_suite([SUITE])
    faults = conversations.FaultControl({"orders": demo_agent.demo.orders_url})
    return conversations.run_suite(suite, demo_agent.chat, faults)


def test_the_suite_covers_what_was_asked() -> None:
    suite = conversations.load_suite([SUITE])
    assert len(suite) >= 40
    names = {c.name for c in suite}
    assert set(QUOTED) <= names
    categories = {c.category for c in suite}
    assert {
        "happy_path", "slot_filling", "corrections", "small_talk", "out_of_scope",
        "human_request", "tool_failure", "knowledge_base",
    } <= categories  # fmt: skip
    # Every intent the quickstart plans has at least one happy path or knowledge-base answer.
    said = {t.expect.intent for c in suite for t in c.turns if t.expect.intent}
    agent = next(d for d in load_manifests([str(QUICKSTART)]) if d["kind"] == "SupportAgent")
    assert {p["intent"] for p in agent["spec"]["intents"]} <= said


def test_every_conversation_ends_as_scripted(
    suite_run: list[conversations.ConversationResult],
) -> None:
    summary = conversations.summarize(suite_run)
    report = conversations.format_summary(summary)
    print(report)
    assert summary["not_run"] == {}, report
    assert summary["failures"] == [], report
    assert summary["overall"]["success_rate"] == 1.0


def test_no_answer_is_grounded_below_the_relevance_threshold(
    demo_agent: Any, suite_run: list[conversations.ConversationResult]
) -> None:
    kb = demo_agent.plan.agents[0].app.knowledge_base
    threshold = kb.min_relevance
    grounded = 0
    for result in suite_run:
        for turn in result.turns:
            response = turn.response
            for source in response["sources"]:
                assert source["score"] >= threshold, (result.conversation.name, turn.say, source)
            if response["reply_kind"] == "knowledge_base":
                grounded += 1
                assert response["sources"], (result.conversation.name, turn.say)
            else:
                assert not response["sources"], (result.conversation.name, turn.say)
    assert grounded >= 10
    # The audit trail says the same, with the top score of every lookup (cited or not).
    sessions = {r.session_id for r in suite_run}
    deadline = time.monotonic() + 15
    while True:
        records = [r for r in demo_agent.audit_lines() if r["session_id"] in sessions]
        looked_up = [r for r in records if r.get("retrieval")]
        if len(records) >= sum(len(r.turns) for r in suite_run) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(looked_up) >= grounded
    declined = 0
    for record in looked_up:
        retrieval = record["retrieval"]
        assert retrieval["min_relevance"] == threshold
        if retrieval["cited"]:
            assert retrieval["top_score"] >= threshold, record
            assert record["reply_kind"] == "knowledge_base"
        else:
            declined += 1
            assert retrieval["top_score"] < threshold, record
            assert record["reply_kind"] == "no_answer"
    assert declined >= 1  # the suite shows a question too vague to ground


def test_small_talk_opens_no_ticket(
    demo_agent: Any, suite_run: list[conversations.ConversationResult]
) -> None:
    handed_off = [t for r in suite_run for t in r.turns if t.response["reply_kind"] == "small_talk"]
    assert handed_off and all(t.response["handoff"] is None for t in handed_off)


def test_eval_conversations_command(demo_agent: Any, tmp_path: Path) -> None:
    """`switchboard eval-conversations` against the live agent: a summary per category, exit 0;
    a conversation whose fault cannot be injected is reported as not run, not passed."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        (SUITE / "small_talk.yaml").read_text()
        + """
  - name: needs a fault
    category: tool_failure
    turns:
      - say: Where is my order ORD-10004?
        fault: {system: orders, fail_next: 3}
        expect: {handoff: tool_failure}
"""
    )
    command = [sys.executable, "-P", "-m", "switchboard.operator.cli", "eval-conversations"]
    done = subprocess.run(
        [*command, demo_agent.url, "--suite", str(suite), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["categories"]["small_talk"]["success_rate"] == 1.0
    assert summary["not_run"] == {"needs a fault": "needs fault control of orders"}
    broken = tmp_path / "broken.yaml"
    broken.write_text("conversations:\n  - name: x\n    category: y\n    turns: []\n")
    done = subprocess.run(
        [*command, demo_agent.url, "--suite", str(broken)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "broken.yaml: conversations[0]" in done.stderr


def test_kb_calibrate_command_measures_the_quickstart_threshold() -> None:
    """The quickstart's minRelevance is what `switchboard kb calibrate` measures on its
    labelled questions (examples/knowledge-base)."""
    done = subprocess.run(
        [sys.executable, "-P", "-m", "switchboard.operator.cli", "kb", "calibrate",
         "-f", str(QUICKSTART), "--questions", str(KB_QUESTIONS), "--json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    agent = next(d for d in load_manifests([str(QUICKSTART)]) if d["kind"] == "SupportAgent")
    configured = agent["spec"]["knowledgeBase"]["minRelevance"]
    low, high = result["best_range"]
    assert low < configured <= high, result
    assert result["wrong_answers"] == 0 and result["accuracy"] >= 0.9
