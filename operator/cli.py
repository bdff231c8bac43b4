"""`switchboard` command line: a thin shell over both planes.

Each subcommand imports what it needs when it runs, so the operator image (no torch, no ray)
can run `crds`, `render` and `operator`.
"""

from __future__ import annotations

import argparse
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
        )
    except RenderError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(yamlio.dump_all(objects))
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    from .main import run

    return run(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        liveness_port=args.liveness_port,
        verbose=args.verbose,
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


def build_parser() -> argparse.ArgumentParser:
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
    render.set_defaults(func=cmd_render)

    op = sub.add_parser("operator", help="run the operator (kopf) against the current cluster")
    scope = op.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all (default)")
    op.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port")
    op.add_argument("--liveness-port", type=int, default=8081, help="health endpoint port")
    op.add_argument("-v", "--verbose", action="store_true")
    op.set_defaults(func=cmd_operator)

    nlu = sub.add_parser(
        "nlu",
        help="train, evaluate and try the intent classifier (switchboard nlu -h)",
        add_help=False,
    )
    nlu.add_argument("nlu_args", nargs=argparse.REMAINDER)
    nlu.set_defaults(func=cmd_nlu)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
