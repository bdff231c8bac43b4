"""The customer chat widget and the agent console (serving/web, docs/handoffs.md "Pages") in a
real browser: Debian's chromium driven by playwright, against the quickstart agent as shipped
(examples/quickstart, its console tokens included) on an embedded Ray Serve with the demo NLU
model and the demo orders and ticketing systems. Nothing in between is a stand-in.

One conversation end to end: the customer chats in the widget, asks for a person, alice claims
the handoff in the console and replies, the reply reaches the customer's page live (and a
second tab of it whose event stream is blocked, by polling), the customer writes again, alice
corrects an intent, rates the bot and resolves, the bot answers the customer again, and
`switchboard feedback export` has the correction.

`SWITCHBOARD_UPDATE_SCREENSHOTS=1` also saves the final screenshots to docs/images/ (the
pictures of docs/handoffs.md); every run keeps its screenshots in the test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switchboard.operator.cli import load_manifests
from switchboard.serving.demo import SAMPLE_ORDERS
from switchboard.serving.web import PAGES, page

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
IMAGES = REPO / "docs" / "images"
UPDATE_SCREENSHOTS = os.environ.get("SWITCHBOARD_UPDATE_SCREENSHOTS") == "1"
CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT_MS = 20_000
PROCESSING = SAMPLE_ORDERS["processing"]
SHIPPED = SAMPLE_ORDERS["shipped"]


def console_tokens(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The human agents' tokens (name -> token) of the quickstart's console tokens Secret."""
    (agent,) = [d for d in docs if d.get("kind") == "SupportAgent"]
    secret = agent["spec"]["handoff"]["consoleTokensSecret"]
    (doc,) = [d for d in docs if d.get("kind") == "Secret" and d["metadata"]["name"] == secret]
    return dict(doc["stringData"])


@pytest.fixture(scope="module")
def quickstart() -> list[dict[str, Any]]:
    return load_manifests([str(QUICKSTART)])


@pytest.fixture(scope="module")
def agent(quickstart: list[dict[str, Any]], serve_manifests: Any) -> Iterator[Any]:
    with serve_manifests(quickstart) as served:
        yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium"
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Pages:
    """Browser contexts (each its own storage, as two people's browsers) that record what
    goes wrong in them: script errors, and requests that leave the agent's origin."""

    def __init__(self, browser: Any, origin: str, shots: Path) -> None:
        self.browser, self.origin, self.shots = browser, origin, shots
        self.problems: list[str] = []
        self.contexts: list[Any] = []

    def open(self, path: str, *, width: int, height: int, block: str | None = None) -> Any:
        """A page in a new context; requests to the glob `block` fail (a network error)."""
        context = self.browser.new_context(viewport={"width": width, "height": height})
        self.contexts.append(context)
        context.on("request", self._request)
        tab = context.new_page()
        self.watch(tab)
        if block:
            tab.route(block, lambda route: route.abort())
        tab.goto(self.origin + path)
        return tab

    def watch(self, tab: Any) -> None:
        tab.on("pageerror", lambda exc: self.problems.append(f"{tab.url}: {exc}"))

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.origin + "/", "data:")):
            self.problems.append(f"request outside the agent: {request.url}")

    def shot(self, tab: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        tab.screenshot(path=str(path))
        return path

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Any, agent: Any, tmp_path: Path) -> Iterator[Pages]:
    opened = Pages(browser, agent.url.rstrip("/"), tmp_path)
    try:
        yield opened
    finally:
        opened.close()


def say(widget: Any, text: str) -> None:
    widget.get_by_label("Your message").fill(text)
    widget.get_by_test_id("send").click()


def test_the_pages_are_self_contained() -> None:
    """One document each, scripts and styles inlined: no other route, no network, no CDN."""
    for name in PAGES:
        html = page(name)
        assert page(f"{name}.html") == html
        assert "<script src=" not in html and 'rel="stylesheet"' not in html
        assert "http://" not in html and "https://" not in html and "//cdn" not in html
        scripts = html.split("<script>")[1:]
        assert scripts and all(s.count("</script") == 1 for s in scripts)
    for bad in ("../pyproject.toml", "common.js", "__init__.py", ""):
        with pytest.raises(KeyError):
            page(bad)


def test_a_customer_and_a_human_agent_finish_a_conversation_in_the_pages(
    agent: Any, pages: Pages, quickstart: list[dict[str, Any]], tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    tokens = console_tokens(quickstart)
    started = time.monotonic()

    # The customer: an order question, answered by the bot from the orders system.
    widget = pages.open("/widget", width=420, height=720)
    session_id = widget.locator("html").get_attribute("data-session-id")
    assert session_id
    # Its first send fails twice, by a network error and a 503 with Retry-After: the page
    # waits and retries with the same request id, and the message is answered once.
    attempts: list[dict[str, Any]] = []

    def flaky(route: Any) -> None:
        attempts.append(route.request.post_data_json)
        if len(attempts) == 1:
            route.abort()
        elif len(attempts) == 2:
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"error": {}})
        else:
            route.continue_()

    widget.route("**/v1/chat", flaky)
    say(widget, f"where is my order {PROCESSING}?")
    expect(widget.get_by_test_id("notice")).to_contain_text("busy")
    expect(widget.get_by_test_id("msg-bot").last).to_contain_text(PROCESSING)
    widget.unroute("**/v1/chat")
    assert len(attempts) == 3 and attempts[0]["request_id"]
    assert all(a == attempts[0] for a in attempts), attempts
    expect(widget.get_by_test_id("notice")).to_be_hidden()
    expect(widget.get_by_test_id("msg-bot")).to_have_count(1)
    expect(widget.get_by_test_id("msg-bot").last).to_have_attribute("data-kind", "answer")

    # A knowledge-base answer shows its sources.
    say(widget, "What shipping options do you have?")
    expect(widget.get_by_test_id("msg-bot").last).to_have_attribute("data-kind", "knowledge_base")
    expect(widget.get_by_test_id("source").first).to_be_visible()

    # Asks for a person: the bot hands over and the page says a human will reply.
    say(widget, "I want to talk to a person")
    expect(widget.get_by_test_id("msg-bot").last).to_have_attribute("data-kind", "handoff")
    banner = widget.get_by_test_id("handoff-state")
    expect(banner).to_have_attribute("data-status", "waiting")
    expect(banner).to_contain_text("will reply here soon")
    expect(banner).to_contain_text("number 1 in the queue")
    pages.shot(widget, "widget-waiting")
    # Marks the document: still there after the human's reply means the page never reloaded.
    widget.evaluate("window.__sameDocument = true")

    # A second tab of the customer whose event stream is blocked: it follows by polling.
    saved_state = widget.evaluate("sessionStorage.getItem('switchboard.widget.state')")
    polling = widget.context.new_page()
    pages.watch(polling)
    polling.route("**/v1/sessions/*/events*", lambda route: route.abort())
    polling.add_init_script(
        f"sessionStorage.setItem('switchboard.widget.state', {json.dumps(saved_state)})"
    )
    polling.goto(pages.origin + "/widget")
    expect(polling.get_by_test_id("handoff-state")).to_have_attribute("data-status", "waiting")

    # The human agent: a wrong token is refused, alice's is accepted.
    console = pages.open("/console", width=1280, height=860)
    console.get_by_label("Your access token").fill("not-a-token")
    console.get_by_test_id("sign-in-button").click()
    expect(console.get_by_test_id("error-code")).to_have_text("unauthenticated")
    console.get_by_label("Your access token").fill(tokens["alice"])
    console.get_by_test_id("sign-in-button").click()
    expect(console.get_by_test_id("me")).to_have_text("alice")
    expect(console.get_by_test_id("error")).to_be_hidden()
    expect(console.get_by_test_id("live-state")).to_have_attribute("data-mode", "stream")

    # The inbox has the handoff with the message that caused it; its context is complete.
    item = console.locator(f'[data-testid="inbox-item"][data-id^="{session_id}"]')
    expect(item).to_contain_text("I want to talk to a person")
    expect(item.get_by_test_id("inbox-queue")).to_have_text("#1 in queue")
    expect(item.get_by_test_id("inbox-assignee")).to_have_text("unassigned")
    record_id = item.get_attribute("data-id")
    assert record_id
    item.click()
    expect(console.get_by_test_id("trigger")).to_contain_text("I want to talk to a person")
    transcript = console.get_by_test_id("transcript")
    expect(transcript).to_contain_text(f"where is my order {PROCESSING}?")
    expect(transcript).to_contain_text("What shipping options do you have?")
    expect(console.get_by_test_id("ctx-intent")).to_contain_text("talk_to_human")
    expect(console.get_by_test_id("ctx-intent")).to_contain_text("% confident")
    expect(console.get_by_test_id("ctx-ticket")).not_to_have_text("none")
    expect(console.get_by_test_id("reply-input")).to_be_disabled()  # claim first

    # bob, whose browser cannot stream the console's events, follows by polling.
    bob = pages.open("/console", width=1024, height=700, block="**/v1/handoffs/events")
    bob.get_by_label("Your access token").fill(tokens["bob"])
    bob.get_by_test_id("sign-in-button").click()
    expect(bob.get_by_test_id("me")).to_have_text("bob")
    expect(bob.get_by_test_id("live-state")).to_have_attribute("data-mode", "poll")
    bob_item = bob.locator(f'[data-testid="inbox-item"][data-id="{record_id}"]')
    expect(bob_item.get_by_test_id("inbox-assignee")).to_have_text("unassigned")

    # Claims and replies; the customer's page shows both without a reload.
    console.get_by_test_id("claim").click()
    expect(console.get_by_test_id("fact-assignee")).to_contain_text("alice (you)")
    expect(bob_item.get_by_test_id("inbox-assignee")).to_have_text("alice")
    bob_item.click()
    expect(bob.get_by_test_id("claim")).to_be_disabled()  # alice has it
    expect(bob.get_by_test_id("reply-input")).to_be_disabled()
    expect(banner).to_have_attribute("data-status", "claimed")
    expect(banner).to_contain_text("alice")
    console.get_by_label("Reply to the customer").fill("Hi, this is Alice. How can I help?")
    console.get_by_test_id("reply-send").click()
    human = widget.get_by_test_id("msg-agent")
    expect(human).to_have_count(1)
    expect(human).to_contain_text("Hi, this is Alice. How can I help?")
    expect(human).to_contain_text("alice")
    assert widget.evaluate("window.__sameDocument") is True
    expect(polling.get_by_test_id("msg-agent")).to_contain_text("Hi, this is Alice.")
    expect(polling.get_by_test_id("msg-agent")).to_have_count(1)  # once, though polled again

    # The customer writes again: it joins the handoff, and the console shows it live.
    say(widget, "My parcel from last week has not arrived")
    expect(widget.get_by_test_id("msg-system").last).to_be_visible()
    expect(console.get_by_test_id("transcript-customer").last).to_contain_text(
        "My parcel from last week has not arrived"
    )
    expect(widget.get_by_test_id("msg-bot")).to_have_count(3)  # the bot stayed out of it

    # An API refusal is shown to the agent: nobody called carol has a token.
    console.get_by_test_id("transfer-to").fill("carol")
    console.get_by_test_id("transfer").click()
    expect(console.get_by_test_id("error-code")).to_have_text("unknown_agent")
    console.get_by_test_id("transfer-to").fill("")

    # Corrects the intent of the customer's later message, rates the bot, resolves.
    console.get_by_test_id("correction-text").select_option(
        "My parcel from last week has not arrived"
    )
    intents = console.get_by_test_id("correction-intent")
    expect(intents.locator("option[value=oos]")).to_have_text("out of scope")
    intents.select_option("track_package")
    console.get_by_test_id("correction-submit").click()
    correction = console.get_by_test_id("correction")
    expect(correction).to_have_attribute("data-intent", "track_package")
    expect(console.get_by_test_id("error")).to_be_hidden()
    console.get_by_test_id("bot-rating-value").select_option("4")
    console.get_by_test_id("bot-rating-submit").click()
    expect(console.get_by_test_id("saved")).to_have_text("Rating saved.")
    console.get_by_label("Reply to the customer").fill(
        f"It is on its way: ask me again with the order number, e.g. {SHIPPED}."
    )
    console.get_by_test_id("reply-send").click()
    expect(human).to_have_count(2)
    console_shot = pages.shot(console, "console")
    console.get_by_test_id("resolve").click()
    expect(console.locator(f'[data-testid="inbox-item"][data-id="{record_id}"]')).to_have_count(0)

    # The customer's page: back to the bot, a rating at the end; the bot answers again.
    expect(widget.get_by_test_id("handoff-banner")).to_be_hidden()
    expect(widget.get_by_test_id("rating")).to_be_visible()
    say(widget, f"where is my order {SHIPPED}?")
    expect(widget.get_by_test_id("msg-bot")).to_have_count(4)
    expect(widget.get_by_test_id("msg-bot").last).to_contain_text(SHIPPED)
    expect(widget.get_by_test_id("msg-bot").last).to_contain_text("shipped")
    widget.get_by_test_id("rating-5").click()
    expect(widget.get_by_test_id("rating-thanks")).to_be_visible()
    widget_shot = pages.shot(widget, "widget")
    assert widget.evaluate("window.__sameDocument") is True
    assert not pages.problems, pages.problems

    # The handoff as the API has it, and the feedback log as the export writes it.
    record = agent_call(agent, f"/v1/handoffs/{record_id}", tokens["alice"])
    assert record["status"] == "resolved" and record["resolved_by"] == "alice"
    assert record["bot_rating"] == 4 and record["csat"] == 5
    assert [(c["text"], c["corrected_intent"]) for c in record["corrections"]] == [
        ("My parcel from last week has not arrived", "track_package")
    ]
    exported = [r for r in feedback_export(agent, tmp_path) if r["session_id"] == session_id]
    assert [(r["text"], r["corrected_intent"], r["source"], r["by"]) for r in exported] == [
        ("I want to talk to a person", None, "escalation", None),
        ("My parcel from last week has not arrived", "track_package", "correction", "alice"),
    ], exported

    if UPDATE_SCREENSHOTS:
        IMAGES.mkdir(exist_ok=True)
        shutil.copyfile(widget_shot, IMAGES / "widget.png")
        shutil.copyfile(console_shot, IMAGES / "console.png")
    print(f"browser scenario: {time.monotonic() - started:.1f}s")


def agent_call(agent: Any, path: str, token: str) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        agent.url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: dict[str, Any] = json.loads(response.read())
    return body


def feedback_export(agent: Any, tmp_path: Path) -> list[dict[str, Any]]:
    """`switchboard feedback export` of the agent's log, as a team would run it."""
    (served,) = agent.plan.agents
    log = served.app.sessions.feedback_path
    assert log, "the local run keeps a feedback log"
    out = tmp_path / "feedback.jsonl"
    done = subprocess.run(
        [sys.executable, "-P", "-m", "switchboard.operator.cli", "feedback", "export",
         "--agent", served.app.agent, "--file", log, "--out", str(out)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
