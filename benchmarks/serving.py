"""Serving benchmark: the quickstart agent on Ray Serve against the same pipeline in one process.

    .venv/bin/python benchmarks/serving.py [--nlu-model DIR] [--duration S] [--json-out FILE]

Prints one JSON document to stdout (progress to stderr). In one run, on this machine:

1. Chat turns/s and latency p50/p95 at 1 and 8 concurrent closed-loop clients (aiohttp, each
   run bounded by `--duration` seconds and `--max-turns` turns), for
   - the Ray Serve pipeline (the revision's application at `/`: its Orchestrator deployment
     runs the turn, `local.serve_plan`) without an LLM,
   - the same with the tiny LLM (`build_tiny_llm`, transformers backend, an `LLM` deployment),
   - the same pipeline in ONE process, no Ray (`local.single_process_api` on uvicorn through
     `serve_in_thread`), without and with the LLM.
   The message mix exercises the real path: order status (NLU, tool call through the orders
   gateway to the demo orders system), a knowledge-base question (retriever; phrased by the LLM
   when there is one), a three-turn slot fill ending in a mutating tool call, and a handoff (a
   ticket created through the ticketing gateway). Every reply is checked; a turn whose reply
   is not what that path produces counts as an error.
2. A profile of one turn at concurrency 1: the Serve proxy and its hop to the Orchestrator, NLU
   and retriever in-process, the gateway call, the demo system behind it, the orchestrator's
   own turn time (audit records) and the CPU seconds each process spent per turn during the
   8-client runs.
3. The targets of the "flat and fast" issue, as ratios and latencies of this same run.

Topology, the same for both pipelines: the demo systems and the tool gateways run in this
process (as `switchboard serve` runs them); the load generator runs in a child process; the
single-process agent runs in another child process (so it shares its GIL with neither the
clients nor the gateways, as the Ray replicas do not). A missed target never makes the script
exit non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

# The helpers the test suite uses (tests/support): tests/ goes on the path, never the repository
# root, whose operator/ would shadow the stdlib module (hence `python -P` too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support import manifests
from support.errors import SetupError
from support.nlu import train_demo_nlu_model
from support.paths import REPO_ROOT
from support.report import concurrent_pytest, machine_facts, percentile, summary_ms, time_calls
from support.serving import embedded_serve

if TYPE_CHECKING:
    from switchboard.serving.config import AgentAppConfig, LocalPlan
    from switchboard.serving.demo import DemoSystems

REPO = REPO_ROOT
DEFAULT_NLU_MODEL = REPO / ".switchboard" / "demo-nlu"
CPUS = 2
CONCURRENCY = (1, 8)
# The "flat and fast" issue's targets: Ray Serve against one process in the same run.
TARGETS = {
    "ray_vs_single_process_throughput_no_llm_c8_min": 0.6,
    "ray_vs_single_process_throughput_tiny_llm_c8_min": 0.8,
    "chat_no_llm_p50_ms_at_1_max": 20.0,
    "chat_no_llm_p95_ms_at_8_max": 120.0,
}

# --- the message mix (plain data: the load-generator child imports nothing else) -------------

SHIPPED, PROCESSING, DELIVERED = "ORD-10004", "ORD-10001", "ORD-10007"
# kind -> turns of one conversation: (message variants, what the reply must show)
CONVERSATIONS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "order_status": [
        (
            (
                f"Where is my order {SHIPPED}?",
                f"Where is my order {DELIVERED}?",
                f"what's the status of order {PROCESSING}",
            ),
            "tool_succeeded",
        )
    ],
    "kb_question": [
        (
            (
                "How long does standard delivery take?",
                "How do I return an item?",
                "I forgot my password",
            ),
            "sources",
        )
    ],
    "slot_fill": [
        (("I need to change the delivery address of my order",), "asks"),
        ((f"it's {PROCESSING}",), "asks"),
        (("221B Baker Street, London NW1 6XE",), "tool_succeeded"),
    ],
    "handoff": [(("I want to talk to a human agent",), "ticket")],
}


def reply_matches(check: str, body: dict[str, Any]) -> bool:
    actions = body.get("actions") or []
    handoff = body.get("handoff")
    if check == "tool_succeeded":
        return bool(actions) and actions[-1].get("status") == "succeeded" and handoff is None
    if check == "sources":
        return bool(body.get("sources")) and handoff is None
    if check == "asks":
        return not actions and handoff is None
    if check == "ticket":
        return bool(handoff and handoff.get("ticket_id"))
    raise ValueError(check)


# --- small helpers ------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[serving-bench] {message}", file=sys.stderr, flush=True)


def ray_version() -> str:
    import ray

    return str(ray.__version__)


def git_commit() -> str | None:
    found = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return found.stdout.strip() or None


def system_state() -> dict[str, Any]:
    return {
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "pytest_running": concurrent_pytest(),
    }


# --- CPU accounting per process -----------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (ppid, label, cpu seconds) for every process readable now."""
    table: dict[int, tuple[int, str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ppid, utime, stime = int(fields[1]), int(fields[11]), int(fields[12])
        first = cmdline[0].decode(errors="replace") if cmdline and cmdline[0] else comm
        label = first.split(" ")[0] if first.startswith("ray::") else comm
        table[int(entry.name)] = (ppid, label, (utime + stime) / TICKS)
    return table


def _system_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / TICKS, total / TICKS


@dataclass
class CpuSnapshot:
    at: float
    table: dict[int, tuple[int, str, float]]
    busy: tuple[float, float]

    @classmethod
    def take(cls) -> CpuSnapshot:
        return cls(time.monotonic(), _proc_table(), _system_busy())


def cpu_breakdown(
    before: CpuSnapshot, after: CpuSnapshot, roles: dict[int, str], turns: int
) -> dict[str, Any]:
    """CPU seconds per process group between two snapshots: this benchmark's process tree
    (labelled by Ray's process titles or `roles`) and everything else on the machine."""
    mine = {os.getpid()}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _, _) in after.table.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                changed = True
    groups: dict[str, float] = {}
    for pid, (_, label, cpu) in after.table.items():
        spent = cpu - (before.table[pid][2] if pid in before.table else 0.0)
        if spent <= 0:
            continue
        if pid in roles:
            name = roles[pid]
        elif pid == os.getpid():
            name = "bench process (demo systems + tool gateways + handle calls)"
        elif pid in mine:
            name = label
        else:
            name = "not this benchmark"
        groups[name] = groups.get(name, 0.0) + spent
    wall = after.at - before.at
    busy = after.busy[0] - before.busy[0]
    total = after.busy[1] - before.busy[1]
    ordered = sorted(groups.items(), key=lambda kv: -kv[1])
    return {
        "wall_s": round(wall, 2),
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        "cpu_s": {k: round(v, 2) for k, v in ordered},
        "cpu_ms_per_turn": {k: round(1000 * v / turns, 2) for k, v in ordered} if turns else {},
    }


# --- load generator (runs in a child process) ---------------------------------------------


async def closed_loop(
    url: str, concurrency: int, duration_s: float, max_turns: int, tag: str
) -> dict[str, Any]:
    """`concurrency` clients, each sending its next turn when the last one is answered."""
    import aiohttp

    records: list[tuple[str, float, bool]] = []
    failures: list[str] = []
    issued = 0
    kinds = list(CONVERSATIONS)
    started = time.perf_counter()
    deadline = started + duration_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)

    async def client(http: aiohttp.ClientSession, index: int) -> None:
        nonlocal issued
        n = 0
        while True:
            kind = kinds[(index + n) % len(kinds)]
            session_id = f"{tag}-{index}-{n}"
            n += 1
            for variants, check in CONVERSATIONS[kind]:
                if time.perf_counter() >= deadline or issued >= max_turns:
                    return
                issued += 1
                message = variants[(index + n) % len(variants)]
                t0 = time.perf_counter()
                ok = False
                try:
                    async with http.post(
                        url, json={"session_id": session_id, "message": message}
                    ) as response:
                        body = await response.json(content_type=None)
                    ok = response.status == 200 and reply_matches(check, body)
                    if not ok and len(failures) < 5:
                        failures.append(f"{kind} {message!r}: {response.status} {body}"[:400])
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    if len(failures) < 5:
                        failures.append(f"{kind} {message!r}: {type(exc).__name__} {exc}"[:400])
                records.append((kind, time.perf_counter() - t0, ok))
                if not ok:
                    break  # the rest of this conversation would not follow the script

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(client(http, i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies = [s for _, s, _ in records]
    per_kind = {kind: summary_ms([s for k, s, _ in records if k == kind]) for kind in CONVERSATIONS}
    return {
        "concurrency": concurrency,
        "turns": len(records),
        "errors": sum(1 for _, _, ok in records if not ok),
        "elapsed_s": round(elapsed, 2),
        "turns_per_s": round(len(records) / elapsed, 1),
        **{k: v for k, v in summary_ms(latencies).items() if k != "n"},
        "p99_ms": round(percentile([s * 1000 for s in latencies], 99), 2),
        "per_kind": per_kind,
        "failure_samples": failures,
    }


def client_main(spec: dict[str, Any]) -> None:
    """Child process: warm up, say `start`, measure, print the result as one JSON line."""
    warmup_turns = 0
    if spec["warmup_s"] > 0:
        warm = asyncio.run(
            closed_loop(spec["url"], spec["concurrency"], spec["warmup_s"], 10**9, "warm")
        )
        warmup_turns = warm["turns"]
    print("start", flush=True)
    cpu0 = time.process_time()
    result = asyncio.run(
        closed_loop(
            spec["url"], spec["concurrency"], spec["duration_s"], spec["max_turns"], spec["tag"]
        )
    )
    result["load_generator_cpu_s"] = round(time.process_time() - cpu0, 2)
    result["warmup_turns"] = warmup_turns
    print(json.dumps(result), flush=True)


def run_clients(
    url: str, concurrency: int, args: argparse.Namespace, tag: str, roles: dict[int, str]
) -> dict[str, Any]:
    """The load generator in a child process, with CPU accounting around its measured part."""
    spec = {
        "url": url,
        "concurrency": concurrency,
        "duration_s": args.duration,
        "max_turns": args.max_turns,
        "warmup_s": args.warmup,
        "tag": tag,
    }
    state = system_state()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--client", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        before: CpuSnapshot | None = None
        result: dict[str, Any] | None = None
        for line in proc.stdout:
            if line.strip() == "start":
                before = CpuSnapshot.take()
            elif line.startswith("{"):
                after = CpuSnapshot.take()
                result = json.loads(line)
                break
        proc.wait(timeout=60)
        if result is None or before is None:
            raise RuntimeError(f"load generator failed (exit {proc.returncode})")
        roles = {**roles, proc.pid: "load generator (aiohttp clients)"}
        result["cpu"] = cpu_breakdown(before, after, roles, result["turns"])
        result["system_at_start"] = state
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def measure_chat(
    url: str, args: argparse.Namespace, tag: str, roles: dict[int, str]
) -> dict[str, Any]:
    out = {}
    for concurrency in CONCURRENCY:
        log(f"{tag}: {concurrency} concurrent client(s) for {args.duration}s")
        result = run_clients(url, concurrency, args, f"{tag}-c{concurrency}", roles)
        log(
            f"{tag} c={concurrency}: {result['turns_per_s']} turns/s, p50 {result['p50_ms']} ms, "
            f"p95 {result['p95_ms']} ms, errors {result['errors']}/{result['turns']}"
        )
        out[f"c{concurrency}"] = result
    return out


# --- the agent --------------------------------------------------------------------------------


def quickstart_documents(with_llm: bool) -> list[dict[str, Any]]:
    docs = manifests.quickstart_documents()
    if with_llm:
        for doc in docs:
            if doc.get("kind") == "SupportAgent":
                doc["spec"]["llm"] = {"backend": "transformers", "modelUri": "file:///x"}
    return docs


def build_plan(
    with_llm: bool, nlu_model: Path, llm_dir: Path, work: Path, demo: DemoSystems
) -> LocalPlan:
    from switchboard.operator.localrun import LocalOverrides, local_plan

    overrides = LocalOverrides(
        nlu_model=str(nlu_model),
        llm_model=str(llm_dir) if with_llm else None,
        knowledge_dir=str(work / "knowledge"),
        system_urls={"orders": demo.orders_url, "ticketing": demo.ticketing_url},
    )
    return local_plan(quickstart_documents(with_llm), overrides)


def revision_app_name(plan: LocalPlan) -> str:
    app = plan.agents[0].app
    return f"{app.agent}-{app.revision}"


def rendered_options(plan: LocalPlan, deployment: str) -> dict[str, Any]:
    agent = plan.agents[0]
    for application in agent.serve_config["applications"]:
        if application["name"] == revision_app_name(plan):
            for entry in application["deployments"]:
                if entry["name"] == deployment:
                    return {k: v for k, v in entry.items() if k != "name"}
    raise KeyError(deployment)


def audit_records(paths: list[Path], session_prefix: str) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith('{"audit":'):
                    record = json.loads(line)["audit"]
                    if str(record.get("session_id", "")).startswith(session_prefix):
                        records.append(record)
    return records


def orchestrator_times(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The orchestrator's own turn time (audit `latency_ms`) and its tool calls, per intent."""
    by_intent: dict[str, list[float]] = {}
    tool_ms: dict[str, list[float]] = {}
    for record in records:
        by_intent.setdefault(record.get("intent") or "none", []).append(record["latency_ms"] / 1000)
        for call in record.get("tool_calls") or []:
            if "ms" in call:
                tool_ms.setdefault(call["operation"], []).append(call["ms"] / 1000)
    return {
        "turn_by_intent": {k: summary_ms(v) for k, v in sorted(by_intent.items())},
        "tool_call_by_operation": {k: summary_ms(v) for k, v in sorted(tool_ms.items())},
        "all_turns": summary_ms([s for v in by_intent.values() for s in v]),
    }


# --- single process (child) -------------------------------------------------------------------


def single_main(config_path: str, url_file: str) -> None:
    """Child process: the pipeline with no Ray, until SIGTERM."""
    from switchboard.serving.asgi_thread import serve_in_thread
    from switchboard.serving.config import AgentAppConfig
    from switchboard.serving.local import single_process_api

    app = AgentAppConfig.model_validate_json(Path(config_path).read_text(encoding="utf-8"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    url, server = serve_in_thread("single-process-agent", single_process_api(app), lifespan="on")
    try:
        tmp = Path(url_file + ".tmp")
        tmp.write_text(url, encoding="utf-8")
        tmp.rename(url_file)
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()


@contextlib.contextmanager
def single_process_agent(app: AgentAppConfig, work: Path, name: str) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of the single-process agent in a child process; its stdout (the audit
    lines) goes to `work/name.log`."""
    config = work / f"{name}.json"
    config.write_text(app.model_dump_json(), encoding="utf-8")
    url_file = work / f"{name}.url"
    with open(work / f"{name}.log", "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-single",
                str(config),
                "--url-file",
                str(url_file),
            ],
            stdout=out,
        )
    try:
        deadline = time.monotonic() + 300
        while not url_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"single-process agent exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("single-process agent did not start in 300 s")
            time.sleep(0.2)
        yield url_file.read_text(encoding="utf-8"), proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def check_mix(url: str) -> dict[str, bool]:
    """One conversation of each kind, sequentially: the replies follow the expected path."""
    out = {}
    for kind, turns in CONVERSATIONS.items():
        session = f"check-{kind.replace('_', '-')}-{time.monotonic_ns()}"
        ok = True
        for variants, check in turns:
            body = json.dumps({"session_id": session, "message": variants[0]}).encode()
            request = urllib.request.Request(
                url, data=body, headers={"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=120) as response:
                reply = json.loads(response.read())
            if not reply_matches(check, reply):
                log(f"mix check {kind}: unexpected reply {reply}")
                ok = False
                break
        out[kind] = ok
    return out


def bench_single_process(
    plan: LocalPlan, gateway_urls: dict[str, str], args: argparse.Namespace, work: Path, tag: str
) -> dict[str, Any]:
    from switchboard.serving.local import with_tool_urls

    app = with_tool_urls(plan.agents[0].app, gateway_urls)
    started = time.monotonic()
    with single_process_agent(app, work, tag) as (base, pid):
        ready_s = time.monotonic() - started
        url = f"{base}/v1/chat"
        result: dict[str, Any] = {"startup_s": round(ready_s, 1), "mix_check": check_mix(url)}
        result.update(measure_chat(url, args, tag, {pid: "single-process agent"}))
    result["orchestrator_c1"] = orchestrator_times(
        audit_records([work / f"{tag}.log"], f"{tag}-c1-")
    )
    return result


# --- Ray Serve --------------------------------------------------------------------------------


def scrape_histogram(metrics_url: str, name: str, application: str) -> tuple[float, float] | None:
    """(count, sum) of a Serve histogram over every replica of `application`."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    count = total = 0.0
    for line in text.splitlines():
        if f'application="{application}"' not in line:
            continue
        if line.startswith(f"ray_{name}_count{{"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"ray_{name}_sum{{"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total


def settled_histogram(metrics_url: str, name: str, application: str) -> tuple[float, float] | None:
    """The histogram once two scrapes 1.5 s apart agree (Ray exports every second here)."""
    last = scrape_histogram(metrics_url, name, application)
    for _ in range(8):
        time.sleep(1.5)
        now = scrape_histogram(metrics_url, name, application)
        if now == last:
            return now
        last = now
    return last


def histogram_delta(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> tuple[float, float] | None:
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]


def timed_ms(fn: Callable[[], object], n: int) -> dict[str, float | int]:
    return summary_ms(time_calls(fn, n))


async def time_async(fn: Callable[[], Any], n: int, warmup: int = 5) -> dict[str, float | int]:
    for _ in range(warmup):
        await fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    return summary_ms(samples)


def profile_hops(
    plan: LocalPlan, agent_url: str, gateway_urls: dict[str, str], demo: DemoSystems, n: int
) -> dict[str, Any]:
    """Each piece of an order-status turn on its own, one call at a time."""
    from switchboard.serving.local import with_tool_urls
    from switchboard.serving.nlu_service import NluService
    from switchboard.serving.retriever import KnowledgeBase
    from switchboard.serving.workflow.tools import HttpToolCaller

    app = with_tool_urls(plan.agents[0].app, gateway_urls)  # as serve_plan deploys it
    text = f"Where is my order {SHIPPED}?"
    question = "How long does standard delivery take?"
    out: dict[str, Any] = {}

    def healthz() -> None:
        with urllib.request.urlopen(f"{agent_url}/healthz", timeout=10) as response:
            response.read()

    # Serve's proxy and the one hop to the Orchestrator replica that runs the turn.
    out["http_proxy_to_orchestrator_healthz"] = timed_ms(healthz, n)
    service = NluService(app.nlu.model_copy(update={"cache_size": 0}))
    out["nlu_model_in_process"] = timed_ms(lambda: service.classify([text]), n)
    if app.knowledge_base:
        kb = KnowledgeBase.load(app.knowledge_base.path, top_k=app.knowledge_base.top_k)
        out["retriever_in_process"] = timed_ms(lambda: kb.search(question, 3), n)

    async def tools() -> None:
        import aiohttp

        caller = HttpToolCaller(app.tools)
        token = demo.credentials.orders_token
        headers = {"Authorization": f"Bearer {token}"}
        try:
            out["gateway_get_order"] = await time_async(
                lambda: caller.call("orders", "get_order", {"order_id": SHIPPED}, None), n
            )
            async with aiohttp.ClientSession() as http:

                async def direct() -> None:
                    url = f"{demo.orders_url}/orders/{SHIPPED}"
                    async with http.get(url, headers=headers) as response:
                        await response.read()

                out["demo_orders_direct"] = await time_async(direct, n)
        finally:
            await caller.close()

    asyncio.run(tools())
    return out


def bench_ray(
    plan: LocalPlan,
    args: argparse.Namespace,
    work: Path,
    tag: str,
    demo: DemoSystems,
    extras: bool,
) -> dict[str, Any]:
    """`serve_plan` on an embedded Ray with 2 CPUs; with `extras`, the hop profile runs on the
    same Ray before it stops."""

    from switchboard.serving import local

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.monotonic()
    with embedded_serve(plan, cpus=CPUS, prefix="sbbench-ray-") as served:
        run, ray_dir = served.run, served.ray_dir
        metrics_url = f"http://127.0.0.1:{served.metrics_port}/metrics"
        url = f"{run.url}/v1/chat"
        revision = revision_app_name(plan)
        result: dict[str, Any] = {
            "startup_s": round(time.monotonic() - started, 1),
            "mix_check": check_mix(url),
            "replica_cpu_shares": {
                d["name"]: d["ray_actor_options"]["num_cpus"]
                for app in local.fit_to_cpus(plan.agents[0].serve_config, CPUS)["applications"]
                for d in app["deployments"]
            },
        }
        for concurrency in CONCURRENCY:
            log(f"{tag}: {concurrency} concurrent client(s) for {args.duration}s")
            before = settled_histogram(metrics_url, "nlu_inference_time_seconds", revision)
            chat = run_clients(url, concurrency, args, f"{tag}-c{concurrency}", {})
            after = settled_histogram(metrics_url, "nlu_inference_time_seconds", revision)
            delta = histogram_delta(before, after)
            if delta and delta[0] > 0:  # the histogram also saw the warm-up turns
                turns = chat["turns"] + chat["warmup_turns"]
                chat["nlu_mean_batch_size"] = round(turns / delta[0], 2)
                chat["nlu_model_ms_per_batch"] = round(1000 * delta[1] / delta[0], 2)
            log(
                f"{tag} c={concurrency}: {chat['turns_per_s']} turns/s, p50 {chat['p50_ms']} ms, "
                f"p95 {chat['p95_ms']} ms, errors {chat['errors']}/{chat['turns']}"
            )
            result[f"c{concurrency}"] = chat
        logs = list((ray_dir / "session_latest" / "logs").rglob("*.out"))
        result["orchestrator_c1"] = orchestrator_times(audit_records(logs, f"{tag}-c1-"))
        if extras:
            log("profile: the pieces of one turn, one call at a time")
            result["profile"] = profile_hops(plan, run.url, run.gateway_urls, demo, n=200)
        return result


# --- main -------------------------------------------------------------------------------------


def ensure_nlu_model(path: Path) -> Path:
    if (path / "manifest.json").exists():
        return path
    log(f"training the demo NLU model into {path} (1-2 minutes)")
    try:
        return train_demo_nlu_model(path)
    except SetupError as exc:
        raise SystemExit(f"benchmark: {exc}") from None


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b else None


def order_status_breakdown(run: dict[str, Any]) -> dict[str, Any]:
    """One order-status turn at concurrency 1 (medians): what the client saw, what the
    orchestrator spent (its audit record), the gateway call inside it, and the rest (HTTP
    server, and on Ray the proxy, router, ingress and handle hops)."""
    end_to_end = run["c1"]["per_kind"]["order_status"]["p50_ms"]
    orchestrator = run["orchestrator_c1"]["turn_by_intent"].get("order_status", {}).get("p50_ms")
    tool = run["orchestrator_c1"]["tool_call_by_operation"].get("orders.get_order", {})
    return {
        "end_to_end_p50_ms": end_to_end,
        "orchestrator_p50_ms": orchestrator,
        "gateway_call_p50_ms": tool.get("p50_ms"),
        "outside_orchestrator_ms": round(end_to_end - orchestrator, 2) if orchestrator else None,
    }


def assemble(result: dict[str, Any]) -> None:
    """Ratios, the order-status breakdown and targets from the measured runs."""
    result["order_status_turn_c1"] = {
        kind: order_status_breakdown(result[kind]["no_llm"]) for kind in ("ray", "single_process")
    }
    ratios: dict[str, Any] = {}
    for llm in ("no_llm", "tiny_llm"):
        ray_run, single = result["ray"].get(llm), result["single_process"].get(llm)
        if not (ray_run and single):
            continue
        for c in CONCURRENCY:
            key = f"c{c}"
            ratios[f"{llm}_{key}"] = ratio(ray_run[key]["turns_per_s"], single[key]["turns_per_s"])
    result["ray_vs_single_process_throughput"] = ratios
    no_llm = result["ray"]["no_llm"]

    def target(measured: float | None, bound: float, most: bool) -> dict[str, Any]:
        passed = measured is not None and (measured <= bound if most else measured >= bound)
        return {"target": f"{'<=' if most else '>='} {bound}", "measured": measured, "pass": passed}

    result["targets"] = {
        "ray_vs_single_process_throughput_no_llm_at_8": target(
            ratios.get("no_llm_c8"),
            TARGETS["ray_vs_single_process_throughput_no_llm_c8_min"],
            False,
        ),
        "ray_vs_single_process_throughput_tiny_llm_at_8": target(
            ratios.get("tiny_llm_c8"),
            TARGETS["ray_vs_single_process_throughput_tiny_llm_c8_min"],
            False,
        ),
        "chat_no_llm_p50_ms_at_1": target(
            no_llm["c1"]["p50_ms"], TARGETS["chat_no_llm_p50_ms_at_1_max"], True
        ),
        "chat_no_llm_p95_ms_at_8": target(
            no_llm["c8"]["p95_ms"], TARGETS["chat_no_llm_p95_ms_at_8_max"], True
        ),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nlu-model", type=Path, default=DEFAULT_NLU_MODEL)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per measured run")
    parser.add_argument("--max-turns", type=int, default=20000, help="turns per measured run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each run")
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--skip-llm", action="store_true", help="no tiny-LLM variants")
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--serve-single", help=argparse.SUPPRESS)
    parser.add_argument("--url-file", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        client_main(json.loads(args.client))
        return 0
    if args.serve_single:
        single_main(args.serve_single, args.url_file)
        return 0

    # Only the final document goes to stdout; anything else writing to fd 1 lands on stderr.
    stdout: IO[str] = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from switchboard.serving.demo import SAMPLE_ORDERS, start_demo_systems
    from switchboard.serving.local import start_gateways
    from switchboard.serving.tiny_llm import build_tiny_llm

    assert (SAMPLE_ORDERS["shipped"], SAMPLE_ORDERS["processing"]) == (SHIPPED, PROCESSING)
    command = " ".join([".venv/bin/python", "benchmarks/serving.py", *sys.argv[1:]])
    result: dict[str, Any] = {
        "benchmark": "switchboard serving",
        "command": command,
        "commit": git_commit(),
        "machine": machine_facts(ray=ray_version()),
        "system_at_start": system_state(),
        "settings": {
            "duration_s": args.duration,
            "max_turns": args.max_turns,
            "warmup_s": args.warmup,
            "concurrency": list(CONCURRENCY),
            "ray_cpus": CPUS,
            "mix": {k: [list(v) for v, _ in turns] for k, turns in CONVERSATIONS.items()},
        },
        "targets_spec": TARGETS,
        "single_process": {},
        "ray": {},
    }
    work = Path(tempfile.mkdtemp(prefix="switchboard-serving-bench-"))
    demo = None
    try:
        nlu_model = ensure_nlu_model(args.nlu_model.resolve())
        result["nlu_model"] = str(nlu_model)
        demo = start_demo_systems(work / "demo.sqlite", orders_port=0, ticketing_port=0)
        llm_dir = work / "tiny-llm"
        variants = ["no_llm"] if args.skip_llm else ["no_llm", "tiny_llm"]
        if not args.skip_llm:
            t0 = time.monotonic()
            build_tiny_llm(llm_dir)
            result["tiny_llm_build_s"] = round(time.monotonic() - t0, 1)
        plans = {v: build_plan(v == "tiny_llm", nlu_model, llm_dir, work, demo) for v in variants}

        # The single-process baseline first, behind the same kind of gateways serve_plan starts.
        gateways = start_gateways(plans["no_llm"].gateways)
        try:
            for variant in variants:
                log(f"single process, {variant}")
                result["single_process"][variant] = bench_single_process(
                    plans[variant], gateways.urls, args, work, f"sp-{variant.replace('_', '')}"
                )
        finally:
            gateways.stop()

        for variant in variants:
            log(f"Ray Serve, {variant}")
            result["ray"][variant] = bench_ray(
                plans[variant],
                args,
                work,
                f"ray-{variant.replace('_', '')}",
                demo,
                extras=variant == "no_llm",
            )
        assemble(result)
    finally:
        if demo is not None:
            demo.stop()
        shutil.rmtree(work, ignore_errors=True)
        result["system_at_end"] = system_state()
    document = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(document + "\n", encoding="utf-8")
    stdout.write(document + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
