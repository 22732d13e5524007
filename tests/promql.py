"""Every PromQL expression Relay ships: the alert and recording rules, the Grafana dashboard
and the KEDA triggers. tests/test_alert_rules.py parses each with promtool;
tests/test_prometheus_stack.py evaluates each against a real Prometheus after real traffic."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from relay_settings import PROJECT_ROOT

INFRA = PROJECT_ROOT / "infra"
RULES = INFRA / "prometheus" / "rules.yml"
DASHBOARDS = INFRA / "grafana" / "dashboards"
K8S = INFRA / "k8s"
COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")
MODIFIERS = ("bool", "on", "ignoring", "group_left", "group_right")


@dataclass(frozen=True)
class PromQL:
    """One expression and where it lives (``rules.yml alert RelayApiErrors``)."""

    source: str
    expr: str
    alert: bool = False  # an alert's expression: its operands return data, not itself


def rule_expressions(path: Path = RULES) -> list[PromQL]:
    found = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            kind = "alert" if "alert" in rule else "record"
            found.append(PromQL(f"{path.name} {kind} {name}", rule["expr"], "alert" in rule))
    return found


def _panels(panels: list[dict]) -> list[dict]:
    nested = [p for panel in panels for p in _panels(panel.get("panels", []))]
    return [*panels, *nested]


def dashboard_expressions(folder: Path = DASHBOARDS) -> list[PromQL]:
    found = []
    for path in sorted(folder.glob("*.json")):
        for panel in _panels(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                where = f"{path.name} panel {panel['title']!r} {target.get('refId', '')}"
                found.append(PromQL(where.strip(), target["expr"]))
    return found


def keda_expressions(folder: Path = K8S) -> list[PromQL]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "ScaledObject":
                continue
            for trigger in doc["spec"]["triggers"]:
                if trigger["type"] == "prometheus":
                    where = f"{path.name} ScaledObject {doc['metadata']['name']}"
                    found.append(PromQL(where, trigger["metadata"]["query"]))
    return found


def every_promql() -> list[PromQL]:
    """Every PromQL expression of the rules, the dashboards and the KEDA triggers."""
    return [*rule_expressions(), *dashboard_expressions(), *keda_expressions()]


def operands(expr: str) -> list[str]:
    """The sides of ``expr``'s top-level comparisons (``a / b > 0.1`` -> ``["a / b"]``),
    without numbers: what must return data for the comparison to mean anything. An
    expression without a top-level comparison is its own one operand."""
    parts, depth, start, quote, i = [], 0, 0, "", 0
    while i < len(expr):
        char = expr[i]
        if quote:
            quote = "" if char == quote and expr[i - 1] != "\\" else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            op = next((c for c in COMPARISONS if expr.startswith(c, i)), None)
            if op:
                parts.append(expr[start:i])
                i += len(op)
                start = i = _after_modifiers(expr, i)
                continue
        i += 1
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip() and not _is_number(p.strip())]


def _after_modifiers(expr: str, i: int) -> int:
    """Skip ``bool``, ``on (...)``, ``group_left (...)``... after a comparison operator."""
    while True:
        rest = expr[i:]
        stripped = rest.lstrip()
        word = next((m for m in MODIFIERS if stripped.startswith(m)), None)
        follows = stripped[len(word) : len(word) + 1] if word else ""
        if word is None or follows.isalnum() or follows == "_":
            return i
        i += len(rest) - len(stripped) + len(word)
        after = expr[i:].lstrip()
        if after.startswith("("):
            i += len(expr[i:]) - len(after)
            i = expr.index(")", i) + 1


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def promtool_parse_errors(expressions: list[str], folder: Path) -> str:
    """promtool's complaints about any of ``expressions`` (empty: all parse). Each becomes
    a recording rule of a throwaway rule file, which ``promtool check rules`` parses."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(expressions)]
    path = folder / "expressions.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    done = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    return "" if done.returncode == 0 else done.stdout + done.stderr
