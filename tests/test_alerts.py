"""The chart's alerts, tested the Prometheus way, with promtool (Debian's prometheus 2.42).

A PrometheusRule is not a rules file: its `spec.groups` are. The chart is rendered with every
alert enabled (the operator-down alert needs the ServiceMonitor), the groups are written to
`rules.yaml` in a temporary folder, and

- `promtool check rules` checks that file (PromQL, templates, durations, duplicate rules);
- `promtool test rules` runs each unit-test file of tests/alerts/ against it: input series for
  the raw metrics as Prometheus scrapes them, every group evaluated (recording rules included,
  in the chart's order), and for each alert a case where it fires (labels and annotations as
  rendered) and one where it stays silent for a healthy agent, tool or operator.

Every alert of the chart must have both kinds of case: a new alert without unit tests fails here.
The support recording rules (containment, handoff times, CSAT: group `switchboard.support.rules`)
have no alert; `promql_expr_test` cases check the values they record from input series, and
every rule of that group must be checked by one.

The unit-test files name `rule_files: [rules.yaml]`; this module adds `group_eval_order` (the
chart's group order, so that an alert reads what the recording rules wrote in the same
evaluation). `pytest tests/test_alerts.py -k chat_turns_failing` runs one file; promtool's
report (expected and actual alerts, labels, annotations) is the failure message.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

HelmTemplate = Callable[..., list[dict[str, Any]]]

REPO = Path(__file__).resolve().parents[1]
UNIT_TESTS = REPO / "tests" / "alerts"
UNIT_TEST_FILES = sorted(UNIT_TESTS.glob("*.yaml"))
RULES_FILE = "rules.yaml"
# Every alert the chart can render.
ENABLED = ("prometheusRule.enabled=true", "metrics.serviceMonitor.enabled=true")
PROMTOOL_TIMEOUT_S = 120
# The recording rules of the support metrics (no alert reads them: promql_expr_test does).
SUPPORT_GROUP = "switchboard.support.rules"


# --------------------------------------------------------------------------------------------
# The rules file and the unit tests beside it


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks: a readable rules file on failure."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any, path: Path) -> None:
    path.write_text(
        yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100),
        encoding="utf-8",
    )


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def alert_rules(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for group in groups for r in group["rules"] if "alert" in r]


def prepare(
    groups: list[dict[str, Any]], folder: Path, files: list[Path] = UNIT_TEST_FILES
) -> Path:
    """`rules.yaml` of the groups in `folder`, and a copy of each unit-test file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    dump({"groups": groups}, folder / RULES_FILE)
    for path in files:
        unit = load(path)
        unit.setdefault("group_eval_order", [g["name"] for g in groups])
        dump(unit, folder / path.name)
    return folder


def promtool_run(promtool: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def groups(helm_template: HelmTemplate) -> list[dict[str, Any]]:
    [rule] = [o for o in helm_template(*ENABLED) if o["kind"] == "PrometheusRule"]
    found: list[dict[str, Any]] = rule["spec"]["groups"]
    return found


@pytest.fixture(scope="module")
def rules_dir(groups: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(groups, tmp_path_factory.mktemp("alerts"))


# --------------------------------------------------------------------------------------------
# promtool


def test_promtool_check_rules(promtool: str, rules_dir: Path, groups: list[dict[str, Any]]) -> None:
    done = promtool_run(
        promtool, rules_dir, "check", "rules", "--lint=all", "--lint-fatal", RULES_FILE
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in output, output


@pytest.mark.parametrize("unit_test", UNIT_TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(promtool: str, rules_dir: Path, unit_test: Path) -> None:
    done = promtool_run(promtool, rules_dir, "test", "rules", unit_test.name)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool test rules {unit_test.name}:\n{output}"
    assert "SUCCESS" in output, output


def test_promtool_unit_tests_catch_a_broken_rule(
    promtool: str, groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The harness sees a failing unit test: a chat-turn alert that counts no turn as failed
    never fires where chat_turns_failing.yaml expects it to."""
    broken = yaml.safe_load(yaml.safe_dump(groups))
    [alert] = [a for a in alert_rules(broken) if a["alert"] == "SwitchboardChatTurnsFailing"]
    assert 'status="error"' in alert["expr"]
    alert["expr"] = alert["expr"].replace('status="error"', 'status="no-such-status"')
    folder = prepare(broken, tmp_path, [UNIT_TESTS / "chat_turns_failing.yaml"])
    done = promtool_run(promtool, folder, "test", "rules", "chat_turns_failing.yaml")
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr


def test_promtool_expr_tests_catch_a_broken_recording_rule(
    promtool: str, groups: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The harness sees a failing `promql_expr_test`: containment without the `or 0 * started`
    fallback records nothing for an agent that never handed off (support_metrics.yaml's calm)."""
    broken = yaml.safe_load(yaml.safe_dump(groups))
    [support] = [g for g in broken if g["name"] == SUPPORT_GROUP]
    fallback = re.compile(r"\s*or\s*0 \* sum by \(namespace, agent\) \([^\n]*\)\)")
    changed = 0
    for rule in support["rules"]:
        if rule.get("record", "").startswith("namespace_agent:ray_agent_conversations_contained:"):
            rule["expr"], n = fallback.subn("", rule["expr"])
            changed += n
    assert changed == 2
    folder = prepare(broken, tmp_path, [UNIT_TESTS / "support_metrics.yaml"])
    done = promtool_run(promtool, folder, "test", "rules", "support_metrics.yaml")
    assert done.returncode != 0
    assert "FAILED" in done.stdout + done.stderr
    assert 'agent="calm"' in done.stdout + done.stderr


# --------------------------------------------------------------------------------------------
# Every alert is covered


def test_unit_test_files_read_the_rendered_rules() -> None:
    assert len(UNIT_TEST_FILES) >= 1
    for path in UNIT_TEST_FILES:
        unit = load(path)
        assert unit["rule_files"] == [RULES_FILE], path.name
        assert unit["tests"], path.name
        for test in unit["tests"]:
            assert test.get("name"), path.name
            assert test.get("alert_rule_test") or test.get("promql_expr_test"), (
                path.name,
                test["name"],
            )


def test_unit_tests_cover_every_alert(groups: list[dict[str, Any]]) -> None:
    """Each alert rule of the chart fires in some case (with its own labels: both burns of
    SwitchboardLatencySLOBurn), and each alert stays silent in another."""
    fired: list[tuple[str, dict[str, str]]] = []
    silent: set[str] = set()
    for path in UNIT_TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test") or []:
                expected = case.get("exp_alerts") or []
                if not expected:
                    silent.add(case["alertname"])
                for alert in expected:
                    fired.append((case["alertname"], alert.get("exp_labels") or {}))
                    assert alert.get("exp_annotations"), (path.name, test["name"])

    rules = alert_rules(groups)
    names = {r["alert"] for r in rules}
    tested = {name for name, _ in fired}
    assert names - tested == set(), "alerts no unit test (tests/alerts/) makes fire"
    assert names - silent == set(), "alerts no unit test (tests/alerts/) expects to be silent"
    assert (tested | silent) - names == set(), "unit tests of alerts the chart does not have"
    for rule in rules:
        static = rule.get("labels") or {}
        assert any(
            name == rule["alert"] and static.items() <= labels.items() for name, labels in fired
        ), f"no unit test fires {rule['alert']} {static}"


def test_unit_tests_check_every_support_recording_rule(groups: list[dict[str, Any]]) -> None:
    """Each recording rule of the support group is queried by a `promql_expr_test` with
    expected samples: containment, handoffs by reason, the human times' quantiles and CSAT."""
    [support] = [g for g in groups if g["name"] == SUPPORT_GROUP]
    records = {r["record"] for r in support["rules"]}
    assert len(records) == len(support["rules"])
    checked: set[str] = set()
    for path in UNIT_TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("promql_expr_test") or []:
                assert case.get("exp_samples"), (path.name, test["name"], case["expr"])
                checked.update(r for r in records if r in case["expr"])
    # One window or quantile of each family is enough: the others come from the same template.
    families = {re.sub(r"(p\d+_)?rate\d+[hd]$", "", r) for r in records}
    covered = {re.sub(r"(p\d+_)?rate\d+[hd]$", "", r) for r in checked}
    assert families - covered == set(), "support recording rules no promql_expr_test checks"
