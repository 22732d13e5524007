"""The rooms of DESIGN.md ("Layout"): imports run one way, flows hold no CLI, SQL or HTTP.

Every import is read from the source, including those inside functions: a lazy import
that runs upward is still a dependency upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

from relay_settings import PROJECT_ROOT

SETTINGS_MODULES = {
    "relay_settings",
    "relay_objectives",
    "relay_operations",
    "relay_pools",
    "bot_config",
}
# What each room may import besides itself (None: anything).
ALLOWED: dict[str, set[str] | None] = {
    "cli": None,
    "deployments": None,
    "bench": None,
    "tests": None,
    "examples": None,
    "api": {"tasks", "store", "blocks", "settings"},
    "flows": {"tasks", "store", "blocks", "settings"},
    "tasks": {"store", "blocks", "settings"},
    "blocks": {"settings"},
    "store": {"settings"},
    "settings": set(),
}
# Libraries that belong in other rooms: a person's command line in cli/, SQL in store/,
# HTTP in tasks/ (flows/ only orchestrates).
NOT_IN_FLOWS = {"argparse", "typer", "click", "sqlalchemy", "sqlmodel", "httpx", "requests"}


def room(module: str) -> str | None:
    top = module.split(".")[0]
    if top in SETTINGS_MODULES:
        return "settings"
    return top if top in ALLOWED else None


def sources() -> list[Path]:
    return [
        path
        for path in PROJECT_ROOT.rglob("*.py")
        if not any(part.startswith(".") for part in path.relative_to(PROJECT_ROOT).parts)
    ]


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)


def test_no_module_imports_a_room_above_its_own():
    upward = []
    for path in sources():
        mine = room(module_name(path))
        allowed = ALLOWED.get(mine) if mine else None
        if allowed is None:
            continue
        for line, name in imports(path):
            theirs = room(name)
            if theirs and theirs != mine and theirs not in allowed:
                upward.append(f"{path.relative_to(PROJECT_ROOT)}:{line} ({mine}) imports {name}")
    assert not upward, "imports that run upward:\n" + "\n".join(upward)


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The check above would miss nothing a lazy import hides."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from flows.bot import dispatch\n    return dispatch\n")
    assert imports(sample) == [(2, "flows.bot")]


def test_flows_hold_orchestration_only():
    found = []
    for path in (PROJECT_ROOT / "flows").glob("*.py"):
        for line, name in imports(path):
            if name.split(".")[0] in NOT_IN_FLOWS:
                found.append(f"flows/{path.name}:{line} imports {name}")
        if 'if __name__ == "__main__"' in path.read_text():
            found.append(f"flows/{path.name} is a command (its place is cli/)")
    assert not found, "\n".join(found)


def test_only_cli_has_commands():
    """Every command a person types lives in cli/: no other module is run with -m."""
    entry_points = [
        str(path.relative_to(PROJECT_ROOT))
        for path in sources()
        if room(module_name(path)) not in {"cli", "bench", "tests", "examples"}
        and (path.name == "__main__.py" or 'if __name__ == "__main__"' in path.read_text())
    ]
    assert entry_points == [], entry_points
