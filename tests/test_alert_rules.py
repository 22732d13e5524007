"""The alert rules: rendered from the settings and committed as that render, checked and
unit-tested by the real promtool, every alert tested firing and quiet and linked to its
runbook; every PromQL expression Relay ships parses; the Alertmanager config is valid.

promtool and amtool come from Debian's `prometheus` and `prometheus-alertmanager` packages
(`make system-deps`, which `make test` runs)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from cli.main import main
from deployments.alert_rules import RULES_FILE, render
from relay_objectives import ObjectivesSettings
from relay_settings import PROJECT_ROOT, RelaySettings
from tests.promql import every_promql, operands, promtool_parse_errors, rule_expressions

PROMETHEUS = PROJECT_ROOT / "infra" / "prometheus"
RUNBOOKS = PROJECT_ROOT / "docs" / "runbooks.md"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: `make system-deps` installs it (Debian's prometheus packages)"
    return path


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, cwd=PROMETHEUS)


def defaults() -> RelaySettings:
    # Given objectives win over the environment: the committed file is the defaults' render.
    return RelaySettings(objectives=ObjectivesSettings())


def alerts_of(rules: dict) -> dict[str, dict]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_committed_rules_are_the_render_of_the_default_settings():
    assert RULES_FILE.read_text() == render(defaults()), (
        "infra/prometheus/rules.yml is stale: run `python -m cli alerts render`"
    )


def test_objectives_from_settings_reach_the_rules():
    settings = RelaySettings(
        objectives=ObjectivesSettings(
            queue_age_by_pool="asr-gpu=45", error_ratio=0.02, quota_left_ratio=0.25
        )
    )
    rules = yaml.safe_load(render(settings))
    records = [r for r in rules["groups"][0]["rules"] if "record" in r]
    gpu = [r for r in records if r.get("labels") == {"pool": "asr-gpu"}]
    assert [r["expr"] for r in gpu] == ["vector(45)"]
    alerts = alerts_of(rules)
    assert alerts["RelayApiErrors"]["expr"].endswith("> 0.02")
    assert alerts["RelayKeyQuotaLow"]["expr"].endswith("< 0.25")
    with pytest.raises(ValueError, match="no-such-pool"):
        render(RelaySettings(objectives=ObjectivesSettings(queue_age_by_pool="no-such-pool=5")))


def test_the_render_command_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "rules.yml"
    assert main(["alerts", "render", "--out", str(out)]) == 0
    assert out.read_text() == render(RelaySettings())
    assert main(["alerts", "render", "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text().replace("vector(600)", "vector(601)"))
    assert main(["alerts", "render", "--out", str(out), "--check"]) == 1
    assert "differs" in capsys.readouterr().err


def test_promtool_accepts_the_rules():
    done = run(tool("promtool"), "check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass():
    files = sorted(p.name for p in (PROMETHEUS / "tests").glob("*.yml"))
    done = run(tool("promtool"), "test", "rules", *(f"tests/{f}" for f in files))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("SUCCESS") == len(files), done.stdout


def test_every_alert_has_unit_tests_that_see_it_fire_and_stay_quiet():
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in (PROMETHEUS / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(alerts_of(yaml.safe_load(RULES_FILE.read_text())))
    assert alerts - fires == set(), "alerts no unit test sees firing"
    # The dead-man's switch fires always: it has no quiet case.
    assert alerts - quiet == {"Watchdog"}, "alerts no unit test sees quiet"


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MkDocs make it."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_alert_links_its_runbook_section():
    anchors = {
        slug(line.lstrip("#")) for line in RUNBOOKS.read_text().splitlines() if line[:3] == "## "
    }
    for name, alert in alerts_of(yaml.safe_load(RULES_FILE.read_text())).items():
        url = alert["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/runbooks.md" and anchor in anchors, f"{name}: {url}"
        assert {"summary", "description"} <= set(alert["annotations"]), name
        assert alert["labels"]["severity"] in {"page", "ticket", "heartbeat"}, name
        assert name in RUNBOOKS.read_text(), f"docs/runbooks.md does not name {name}"


def test_every_promql_expression_parses(tmp_path):
    """Rules, dashboard and KEDA triggers, and the operands the stack test evaluates."""
    tool("promtool")
    found = every_promql()
    sources = {e.source.split()[0] for e in found}
    assert {"rules.yml", "relay.json", "keda.yaml"} <= sources, sources
    expressions = [e.expr for e in found]
    expressions += [o for e in found if e.alert for o in operands(e.expr)]
    errors = promtool_parse_errors(expressions, tmp_path)
    assert not errors, errors
    # The check itself catches a broken expression.
    assert "check:expr_1" in promtool_parse_errors(["up", "sum(rate(x[5m])"], tmp_path)


def test_alert_operands_drop_thresholds_and_matching_modifiers():
    assert operands('up{job=~"a|b"} == 0') == ['up{job=~"a|b"}']
    assert operands("a / b > on (pool) group_left () c") == ["a / b", "c"]
    assert operands('x{l="a>b"} < bool 0.1') == ['x{l="a>b"}']
    assert operands("vector(1)") == ["vector(1)"]
    alerts = [e for e in rule_expressions() if e.alert]
    assert alerts and all(operands(e.expr) for e in alerts)


def test_alertmanager_config_is_valid_once_its_urls_are_filled_in(tmp_path):
    text = (PROJECT_ROOT / "infra" / "alertmanager" / "alertmanager.yml").read_text()
    filled = tmp_path / "alertmanager.yml"
    filled.write_text(
        text.replace(
            "@ALERTS_DISCORD_WEBHOOK_URL@", "https://discord.com/api/webhooks/1/t"
        ).replace("@HEARTBEAT_URL@", "https://heartbeat.example/ping/relay")
    )
    done = run(tool("amtool"), "check-config", str(filled))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(text)
    routes = {tuple(r["matchers"]): r["receiver"] for r in config["route"]["routes"]}
    assert routes[('severity="heartbeat"',)] == "heartbeat"
    heartbeat = next(r for r in config["receivers"] if r["name"] == "heartbeat")
    assert heartbeat["webhook_configs"], "the Watchdog must leave for an external receiver"
