"""PII never reaches an LLM prompt, an audit record, the stored transcript or a handoff ticket:
property tests with generated emails, card numbers and phone numbers.

The turns run in-process (no Ray) through the real orchestrator, the real demo NLU model, the
knowledge base, a real tiny LLM (wrapped only to record its prompts), and real tool gateways in
front of the demo systems.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.manifests import quickstart_documents
from switchboard.operator.localrun import LocalOverrides, local_plan
from switchboard.serving import local
from switchboard.serving.config import LlmConfig
from switchboard.serving.demo import SAMPLE_ORDERS, start_demo_systems
from switchboard.serving.llm import load_generator
from switchboard.serving.nlu_service import NluService
from switchboard.serving.tiny_llm import build_tiny_llm
from switchboard.serving.workflow.orchestrator import Orchestrator
from switchboard.serving.workflow.pii import luhn_valid, redact
from switchboard.serving.workflow.sessions import MemorySessionStore
from switchboard.serving.workflow.tools import AsyncioTaskRunner, HttpToolCaller
from switchboard.serving.workflow.types import ChatRequest


def _with_check_digit(body: str) -> str:
    for digit in "0123456789":
        if luhn_valid(body + digit):
            return body + digit
    raise AssertionError("unreachable")


def _grouped_card(prefix: str, rest: str, sep: str) -> str:
    number = _with_check_digit(prefix + rest)
    return sep.join(number[i : i + 4] for i in range(0, len(number), 4))


cards = st.builds(
    _grouped_card,
    st.sampled_from(["4", "51", "37", "6011"]),
    st.text("0123456789", min_size=11, max_size=11),
    st.sampled_from(["", " ", "-"]),
)
phones = st.builds(
    lambda cc, groups, sep: ("+" + cc + sep if cc else "") + sep.join(groups),
    st.sampled_from(["", "1", "44", "49", "33"]),
    st.lists(st.text("0123456789", min_size=3, max_size=4), min_size=3, max_size=3),
    st.sampled_from([" ", "-", "."]),
)
emails = st.emails().filter(lambda e: len(e) < 80 and " " not in e)
filler = st.text(alphabet=st.characters(categories=("L", "Zs")), max_size=20)


@settings(max_examples=300, derandomize=True)  # reproducible in CI; widen locally at will
@given(email=emails, card=cards, phone=phones, before=filler, after=filler)
def test_redact_removes_generated_pii(
    email: str, card: str, phone: str, before: str, after: str
) -> None:
    text = f"{before} mail {email} card {card}; phone {phone} {after}"
    clean = redact(text)
    for secret in (email, card, phone, card.replace(" ", "").replace("-", "")):
        assert secret not in clean


@pytest.mark.parametrize(
    "kept", ["order ORD-10004", "refund $49.99", "order 123456", "2 items", "2026-11-24"]
)
def test_redact_keeps_what_the_agent_needs(kept: str) -> None:
    assert redact(f"about {kept} please") == f"about {kept} please"


# --- through the whole turn --------------------------------------------------------------------


class RecordingGenerator:
    """The real tiny LLM, with every prompt it receives kept for inspection."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.prompts: list[str] = []

    async def generate(self, prompt: str, max_tokens: int) -> str:
        self.prompts.append(prompt)
        text: str = await self.inner.generate(prompt, max_tokens)
        return text


class Harness:
    def __init__(
        self, orchestrator: Orchestrator, llm: RecordingGenerator, audit: list[Any], demo: Any
    ) -> None:
        self.orchestrator = orchestrator
        self.llm = llm
        self.audit = audit
        self.demo = demo
        self.loop = asyncio.new_event_loop()

    def turn(self, session: str, message: str) -> Any:
        request = ChatRequest(session_id=session, message=message)
        return self.loop.run_until_complete(self.orchestrator.turn(request))


@pytest.fixture(scope="module")
def harness(demo_nlu_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    state = tmp_path_factory.mktemp("pii")
    demo = start_demo_systems(state / "demo.sqlite", orders_port=0, ticketing_port=0)
    docs = quickstart_documents()
    plan = local_plan(
        docs,
        LocalOverrides(
            nlu_model=str(demo_nlu_model),
            knowledge_dir=str(state / "kb"),
            system_urls={"orders": demo.orders_url, "ticketing": demo.ticketing_url},
        ),
    )
    gateways = local.start_gateways(plan.gateways)
    app = local.with_tool_urls(plan.agents[0].app, gateways.urls)
    llm_dir = build_tiny_llm(state / "llm")
    llm_config = LlmConfig(backend="transformers", model_path=str(llm_dir), revision="tiny")
    generator = RecordingGenerator(load_generator(llm_config))
    audit: list[Any] = []
    tools = HttpToolCaller(app.tools)
    kb = local.LocalRetriever(app.knowledge_base.path, 3) if app.knowledge_base else None
    orchestrator = Orchestrator(
        app.model_copy(update={"llm": llm_config}),
        understander=local.LocalUnderstander(NluService(app.nlu)),
        tools=tools,
        sessions=MemorySessionStore(3600),
        tasks=AsyncioTaskRunner(tools),
        generator=generator,
        retriever=kb,
        audit=audit.append,
    )
    h = Harness(orchestrator, generator, audit, demo)
    try:
        yield h
    finally:
        h.loop.run_until_complete(tools.close())
        h.loop.close()
        gateways.stop()
        demo.stop()


MESSAGES = [
    "What shipping options do you have? You can reach me at {email} or {phone}.",
    "I want a refund for order ORD-10007, charge it back to card {card}, my email is {email}",
    "please let me talk to a person, call {phone}, card {card}",
    "where is my order " + SAMPLE_ORDERS["shipped"] + "? email {email}",
    "blorp zzzt {card} {email} {phone}",
]


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(email=emails, card=cards, phone=phones, template=st.sampled_from(MESSAGES))
def test_no_pii_in_prompts_audit_transcript_or_tickets(
    harness: Harness, email: str, card: str, phone: str, template: str
) -> None:
    harness.llm.prompts.clear()
    harness.audit.clear()
    message = template.format(email=email, card=card, phone=phone)
    answer = harness.turn(f"pii-{abs(hash(message))}", message)
    session = harness.loop.run_until_complete(
        harness.orchestrator.sessions.get(f"pii-{abs(hash(message))}")
    )
    ticket = ""
    if answer.handoff and answer.handoff.ticket_id:
        ticket = json.dumps(harness.demo.store.get_ticket(answer.handoff.ticket_id))
    places = {
        "llm prompts": "\n".join(harness.llm.prompts),
        "audit": json.dumps(harness.audit),
        "transcript": json.dumps(session.transcript if session else []),
        "ticket": ticket,
    }
    for where, text in places.items():
        for secret in (email, card, phone, card.replace(" ", "").replace("-", "")):
            assert secret not in text, f"{secret!r} leaked into {where}"
    assert harness.audit, "every turn writes an audit record"


def test_the_llm_is_used_for_knowledge_answers(harness: Harness) -> None:
    harness.llm.prompts.clear()
    answer = harness.turn("kb-llm", "What shipping options do you have?")
    assert harness.llm.prompts and "<passage id=" in harness.llm.prompts[0]
    assert answer.sources and answer.reply
