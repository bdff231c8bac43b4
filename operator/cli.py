"""`switchboard` command line: a thin shell over both planes.

Each subcommand imports what it needs when it runs, so the operator image (no torch, no ray)
can run `crds`, `render` and `operator`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

DEFAULT_CRD_DIR = Path("crds")


def _manifest_files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif path.is_file():
            yield path
        else:
            raise SystemExit(f"switchboard: no such file or directory: {raw}")


def load_manifests(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Every YAML document in the given files and directories (recursively), in path order."""
    import yaml

    documents = []
    for path in _manifest_files(paths):
        try:
            documents += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        except yaml.YAMLError as exc:
            raise SystemExit(f"switchboard: {path}: invalid YAML: {exc}") from None
    return documents


def cmd_crds(args: argparse.Namespace) -> int:
    from .api.crdgen import stale_crds, write_crds

    out = Path(args.out)
    if args.check:
        stale = stale_crds(out)
        if stale:
            print(
                f"switchboard: CRDs in {out} are stale: {', '.join(stale)}; "
                "run `switchboard crds` and commit the result",
                file=sys.stderr,
            )
            return 1
        print(f"CRDs in {out} are up to date")
        return 0
    for path in write_crds(out):
        print(f"wrote {path}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from . import yamlio
    from .render import RenderError, render_manifests

    try:
        objects = render_manifests(
            load_manifests(args.file),
            default_namespace=args.namespace,
            hpa_api_version=args.hpa_api_version,
            istio=not args.no_istio,
        )
    except RenderError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yamlio.dump_all(objects))
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from .config import scrapers_of
    from .main import run

    try:
        scrapers = scrapers_of(args.scraper_pod_labels, args.scraper_namespace_labels)
    except ValueError as exc:
        print(f"switchboard: --scraper-*-labels: {exc}", file=sys.stderr)
        return 2

    return run(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        verbose=args.verbose,
        prometheus_url=args.prometheus_url,
        peering=args.peering,
        priority=args.priority,
        scrapers=scrapers,
    )


def cmd_nlu(args: argparse.Namespace) -> int:
    try:
        from switchboard.serving.nlu.cli import main as nlu_main
    except ImportError as exc:  # the operator image has no torch
        print(
            f"switchboard nlu needs the serving extra: pip install 'switchboard[serving]' ({exc})",
            file=sys.stderr,
        )
        return 2
    code: int = nlu_main(args.nlu_args)
    return code


def cmd_train(args: argparse.Namespace) -> int:
    """Ask a ModelTraining for one run now: a new value of its run-requested annotation (the
    operator starts it once the run going, if any, has finished)."""
    from datetime import UTC, datetime

    from .api.base import API_VERSION
    from .api.modeltraining import RUN_NOW_ANNOTATION
    from .kube import Kube, KubeError

    request = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        kube = Kube.from_environment(pool_size=1)
        kube.annotate(
            API_VERSION, "ModelTraining", args.namespace, args.name, {RUN_NOW_ANNOTATION: request}
        )
    except KubeError as exc:
        print(f"ModelTraining {args.namespace}/{args.name}: {exc}", file=sys.stderr)
        return 1
    print(
        f"ModelTraining {args.namespace}/{args.name}: run requested ({request}); "
        f"follow it with: kubectl -n {args.namespace} get modeltraining {args.name} -w"
    )
    return 0


def cmd_feedback_export(args: argparse.Namespace) -> int:
    from . import feedback
    from .render.serve_config import REDIS_URL_ENV

    since = None
    if args.since:
        try:
            since = feedback.parse_timestamp(args.since)
        except ValueError as exc:
            print(f"switchboard feedback export: --since: {exc}", file=sys.stderr)
            return 2
    redis_url = args.redis_url
    if redis_url is None and args.file is None:
        redis_url = os.environ.get(REDIS_URL_ENV) or None
    try:
        if redis_url is not None:
            source = f"redis key {feedback.feedback_key(args.namespace, args.agent)}"
            records = feedback.read_redis(redis_url, args.namespace, args.agent)
        else:
            path = args.file or feedback.default_feedback_path(
                args.namespace, args.agent, args.state_dir
            )
            source = str(path)
            records = feedback.read_file(path)
        selected = feedback.select(records, since=since, corrected_only=args.corrected_only)
        if args.out and args.out != "-":
            count = feedback.write_jsonl_file(selected, args.out)
        else:
            count = feedback.write_jsonl(selected, sys.stdout)
    except feedback.FeedbackError as exc:
        print(f"switchboard feedback export: {exc}", file=sys.stderr)
        return 1
    corrections = sum(1 for r in selected if r.corrected)
    print(
        f"exported {count} of {len(records)} records ({corrections} corrections) from {source}",
        file=sys.stderr,
    )
    return 0


SAMPLE_REQUESTS = (
    ("demo-1", "Where is my order ORD-10004?"),
    ("demo-2", "I need to change the delivery address of my order"),
    ("demo-3", "What shipping options do you have?"),
)


class _Stop(BaseException):
    """SIGTERM (or Ctrl-C) while `switchboard serve` starts or runs: unwinds it through its
    cleanup. A BaseException, so no `except Exception` on the way swallows it."""


class _Signals:
    """The SIGTERM/SIGINT handler of `switchboard serve`: raises `_Stop` in the main thread,
    except while `ray.init` starts Ray's processes, where an exception would leave some of them
    running; a signal then is held until `ray.init` returns."""

    def __init__(self) -> None:
        self.held: int | None = None
        self.holding = False

    def __call__(self, signum: int, _frame: Any) -> None:
        if self.holding:
            self.held = signum
            return
        raise _Stop(signum)

    @contextlib.contextmanager
    def around_ray_init(self) -> Iterator[None]:
        """Within: `ray.init` keeps this handler instead of installing Ray's own (which calls
        sys.exit(SIGTERM) from wherever the driver is) and holds signals while it runs."""
        import signal

        import ray
        from ray._private import utils as ray_utils

        real_init, real_set = ray.init, ray_utils.set_sigterm_handler

        def init(*args: Any, **kwargs: Any) -> Any:
            self.holding = True
            try:
                return real_init(*args, **kwargs)
            finally:
                self.holding = False
                signal.signal(signal.SIGTERM, self)
                if self.held is not None:
                    raise _Stop(self.held)

        ray.init = init
        ray_utils.set_sigterm_handler = lambda _handler: None
        try:
            yield
        finally:
            ray.init, ray_utils.set_sigterm_handler = real_init, real_set


def _import_ray_without_failure_handler() -> None:
    """Import Ray with its C++ failure-signal handler off in this process only. In the driver
    that handler catches SIGTERM first and prints a "*** SIGTERM received ... ***" stack dump;
    the variable is read once, on import, and removed again so that Ray's own processes,
    started later with this environment, keep their crash reports."""
    import os

    name = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"
    previous = os.environ.get(name)
    os.environ[name] = "1"
    try:
        import ray  # noqa: F401
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def cmd_serve(args: argparse.Namespace) -> int:
    """The agents in the manifests on an embedded Ray Serve, with local tool gateways.

    SIGTERM (what a container gets) and Ctrl-C stop it the same way, at any point: Serve, Ray,
    the gateways, then the demo systems, and exit status 0."""
    import signal

    handler = _Signals()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    try:
        return _serve(args, handler)
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


def _serve(args: argparse.Namespace, handler: _Signals) -> int:
    import signal
    import threading

    from .localrun import LocalOverrides, local_plan
    from .render import RenderError

    try:
        from switchboard.serving import local
    except ImportError as exc:
        print(f"switchboard serve needs the serving extra ({exc})", file=sys.stderr)
        return 2
    demo = None
    run = None
    try:
        _import_ray_without_failure_handler()
        state = Path(args.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        system_urls: dict[str, str] = {}
        if args.demo_systems:
            from switchboard.serving.demo import start_demo_systems

            demo = start_demo_systems(
                state / "demo-systems.sqlite", orders_port=0, ticketing_port=0
            )
            system_urls = {"orders": demo.orders_url, "ticketing": demo.ticketing_url}
            print(f"demo systems: orders {demo.orders_url}, ticketing {demo.ticketing_url}")
        overrides = LocalOverrides(
            nlu_model=args.nlu_model,
            llm_model=args.llm_model,
            candidate_model=args.candidate_model,
            knowledge_dir=str(state / "knowledge"),
            state_dir=str(state),
            tool_urls=dict(pair.split("=", 1) for pair in args.tool_url),
            system_urls=system_urls,
        )
        try:
            plan = local_plan(load_manifests(args.file), overrides, args.namespace)
        except RenderError as exc:
            print(f"switchboard: {exc}", file=sys.stderr)
            return 1
        print("starting Ray Serve and the agents (about a minute)...", flush=True)
        with handler.around_ray_init():
            # A `_Stop` in here unwinds through serve_plan, which shuts Ray and the gateways down.
            run = local.serve_plan(plan, host=args.host, port=args.port, cpus=args.cpus)
        url = run.url
        print(f"\nagent ready at {url}  (OpenAPI: {url}/docs)\nTry:")
        for session, message in SAMPLE_REQUESTS:
            body = json.dumps({"session_id": session, "message": message})
            print(f"  curl -s {url}/v1/chat -H 'content-type: application/json' -d '{body}'")
        print(f"or chat: switchboard chat {url}")
        for agent in plan.agents:
            base = url if len(plan.agents) == 1 else f"{url}/{agent.app.agent}"
            print(f"customer chat widget: {base}/widget")
            people = ", ".join(sorted(agent.console_tokens)) or "nobody: no consoleTokensSecret"
            print(f"agent console: {base}/console  (sign in as {people}, tokens in its Secret)")
        if demo is not None:
            print(
                f"or run the demo conversation set: switchboard eval-conversations {url} "
                f"--suite tests/conversations --fault-url orders={demo.orders_url}"
            )
        print("Ctrl-C stops everything.", flush=True)
        threading.Event().wait()  # until the signal handler raises
    except _Stop:
        pass
    finally:
        # A second signal must not interrupt the shutdown and leave Ray processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if run is not None or demo is not None:
            print("stopping...", flush=True)
        try:
            if run is not None:
                run.stop()  # Serve, Ray, then the gateways
        finally:
            if demo is not None:
                demo.stop()
    print("stopped", flush=True)
    return 0


def cmd_kb_calibrate(args: argparse.Namespace) -> int:
    """The relevance threshold for an agent's knowledge base, from labelled questions."""
    import tempfile

    from .localrun import agent_knowledge_base
    from .render import RenderError

    try:
        from switchboard.serving.retriever import KnowledgeBase, calibrate_relevance
        from switchboard.serving.workflow.grounding import load_questions
    except ImportError as exc:
        print(f"switchboard kb needs the serving extra ({exc})", file=sys.stderr)
        return 2
    try:
        questions = load_questions(args.questions)
    except (OSError, ValueError) as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="switchboard-kb-") as scratch:
        if args.kb:
            path = Path(args.kb)
        else:
            try:
                path = agent_knowledge_base(load_manifests(args.file), args.agent, Path(scratch))
            except RenderError as exc:
                print(f"switchboard: {exc}", file=sys.stderr)
                return 1
        result = calibrate_relevance(KnowledgeBase.load(path, top_k=1), questions)
    report = result.as_dict()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    low, high = report["best_range"]
    print(
        f"minRelevance: {result.min_relevance}  (every value in ({low}, {high}] does as well)\n"
        f"right: {result.correct}/{result.total} ({report['accuracy']:.1%}); "
        f"answered from the wrong document: {result.wrong_answers}; "
        f"answerable but declined: {result.missed}\n"
        "Set it as spec.knowledgeBase.minRelevance of the SupportAgent."
    )
    return 0


def cmd_eval_conversations(args: argparse.Namespace) -> int:
    """Scripted conversations against a running agent; exit 1 when any fails."""
    from switchboard.serving import conversations
    from switchboard.serving.chat import Client

    try:
        suite = conversations.load_suite(args.suite)
    except conversations.SuiteError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    faults = conversations.FaultControl(dict(p.split("=", 1) for p in args.fault_url))
    results = conversations.run_suite(suite, Client(args.url), faults)
    summary = conversations.summarize(results)
    print(json.dumps(summary, indent=2) if args.json else conversations.format_summary(summary))
    return 0 if not summary["failures"] else 1


def cmd_chat(args: argparse.Namespace) -> int:
    from switchboard.serving.chat import chat

    return chat(args.url, args.session)


def build_parser() -> argparse.ArgumentParser:
    from .render.serve_config import REDIS_URL_ENV

    parser = argparse.ArgumentParser(
        prog="switchboard", description="Run AI customer-support agents on Ray Serve."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    crds = sub.add_parser("crds", help="write the CustomResourceDefinitions from the API models")
    crds.add_argument("--out", default=str(DEFAULT_CRD_DIR), help="directory (default: crds)")
    crds.add_argument("--check", action="store_true", help="exit 1 if the files are stale")
    crds.set_defaults(func=cmd_crds)

    render = sub.add_parser("render", help="print the objects the operator would create")
    render.add_argument("-f", "--file", action="append", required=True, help="file or directory")
    render.add_argument("-n", "--namespace", default="default", help="for objects without one")
    render.add_argument(
        "--hpa-api-version",
        default="autoscaling/v2",
        choices=["autoscaling/v2", "autoscaling/v2beta2"],
        help="HPA version to render (the operator picks it by discovery)",
    )
    render.add_argument(
        "--no-istio",
        action="store_true",
        help="no Istio AuthorizationPolicies for the gateways (the operator renders them where "
        "the cluster serves security.istio.io/v1)",
    )
    render.set_defaults(func=cmd_render)

    op = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all (default)")
    op.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port")
    op.add_argument("--liveness-port", type=int, default=8081, help="health endpoint port")
    op.add_argument(
        "--prometheus-url", help="Prometheus for ModelRollout analysis (or per rollout)"
    )
    op.add_argument(
        "--scraper-pod-labels",
        metavar="K=V,...",
        help="pods the tool gateways admit for metrics "
        "(default: app.kubernetes.io/name=prometheus)",
    )
    op.add_argument(
        "--scraper-namespace-labels",
        metavar="K=V,...",
        help="namespaces those pods may run in (default: any)",
    )
    op.add_argument(
        "--peering",
        metavar="NAME",
        help="run as one of several replicas: they meet on this (Cluster)KopfPeering and one acts",
    )
    op.add_argument(
        "--priority", type=int, help="peering priority (default: drawn at random per replica)"
    )
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=cmd_operator)

    serve = sub.add_parser("serve", help="run the manifests' agents locally on Ray Serve")
    serve.add_argument("-f", "--file", action="append", required=True, help="file or directory")
    serve.add_argument("-n", "--namespace", default="default")
    serve.add_argument("--nlu-model", help="local NLU artifact directory (switchboard nlu train)")
    serve.add_argument("--llm-model", help="local LLM directory for agents with an LLM")
    serve.add_argument(
        "--candidate-model", help="local model directory for a ModelRollout's candidate"
    )
    serve.add_argument(
        "--tool-url", action="append", default=[], metavar="ADAPTER=URL",
        help="local base URL of a ToolAdapter's business system",
    )  # fmt: skip
    serve.add_argument(
        "--demo-systems", action="store_true",
        help="start the demo orders and ticketing systems (SQLite) and route adapters to them",
    )  # fmt: skip
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--cpus", type=int, default=4, help="logical CPUs for the embedded Ray")
    serve.add_argument(
        "--state-dir", default=".switchboard", help="demo database, KB files, feedback logs"
    )
    serve.set_defaults(func=cmd_serve)

    chat = sub.add_parser("chat", help="chat with a running agent in the terminal")
    chat.add_argument("url", help="the agent's base URL, e.g. http://127.0.0.1:8000")
    chat.add_argument("--session", help="session id (default: a new one)")
    chat.set_defaults(func=cmd_chat)

    evaluate = sub.add_parser(
        "eval-conversations", help="run scripted conversations against a running agent"
    )
    evaluate.add_argument("url", help="the agent's base URL, e.g. http://127.0.0.1:8000")
    evaluate.add_argument(
        "--suite", action="append", required=True, help="YAML file or folder of conversations"
    )
    evaluate.add_argument(
        "--fault-url", action="append", default=[], metavar="SYSTEM=URL",
        help="fault control of a business system (the demo systems'), for tool-failure turns",
    )  # fmt: skip
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON")
    evaluate.set_defaults(func=cmd_eval_conversations)

    kb = sub.add_parser("kb", help="knowledge-base tools")
    kb_sub = kb.add_subparsers(dest="kb_command", required=True)
    calibrate = kb_sub.add_parser(
        "calibrate", help="choose knowledgeBase.minRelevance from labelled questions"
    )
    source = calibrate.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--file", action="append", help="manifests with the agent's KB")
    source.add_argument("--kb", help="a directory of knowledge-base documents")
    calibrate.add_argument("--agent", help="which SupportAgent of the manifests")
    calibrate.add_argument("--questions", required=True, help="YAML: questions: [{text, document}]")
    calibrate.add_argument("--json", action="store_true", help="print the result as JSON")
    calibrate.set_defaults(func=cmd_kb_calibrate)

    fb = sub.add_parser("feedback", help="the agents' feedback logs (corrections, escalations)")
    fb_sub = fb.add_subparsers(dest="feedback_command", required=True)
    export = fb_sub.add_parser(
        "export",
        help="write an agent's feedback log as JSON Lines for `switchboard nlu train --feedback`",
        description="Read an agent's feedback log (the Redis list "
        "switchboard:NS:AGENT:feedback, or the local JSON Lines file of `switchboard serve`) and "
        "write its records in time order, one JSON object per line. The Redis URL comes from "
        f"--redis-url, else ${REDIS_URL_ENV} unless --file is given; without either, the local "
        "file STATE_DIR/feedback/NS-AGENT.jsonl is read.",
    )
    export.add_argument("--agent", required=True, help="the SupportAgent's name")
    export.add_argument(
        "-n", "--namespace", default="default", help="its namespace (default: default)"
    )
    log = export.add_mutually_exclusive_group()
    log.add_argument("--redis-url", help=f"Redis holding the log (default: ${REDIS_URL_ENV})")
    log.add_argument("--file", help="a local feedback log (JSON Lines)")
    export.add_argument(
        "--state-dir",
        default=".switchboard",
        help="`switchboard serve --state-dir`, for the default file (default: .switchboard)",
    )
    export.add_argument("-o", "--out", help="output file (default: stdout)")
    export.add_argument("--since", metavar="RFC3339", help="only records at or after this time")
    export.add_argument(
        "--corrected-only",
        action="store_true",
        help="only corrections (skip escalations nobody labelled: corrected_intent null)",
    )
    export.set_defaults(func=cmd_feedback_export)

    train = sub.add_parser(
        "train", help="start one run of a ModelTraining now (after the running one, if any)"
    )
    train.add_argument("name", help="the ModelTraining")
    train.add_argument("-n", "--namespace", default="default")
    train.set_defaults(func=cmd_train)

    nlu = sub.add_parser(
        "nlu",
        help="train, evaluate and try the intent classifier (switchboard nlu -h)",
        add_help=False,
    )
    nlu.add_argument("nlu_args", nargs=argparse.REMAINDER)
    nlu.set_defaults(func=cmd_nlu)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["nlu"]:  # its own parser: argparse's REMAINDER would swallow `nlu -h`
        return cmd_nlu(argparse.Namespace(nlu_args=argv[1:]))
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
