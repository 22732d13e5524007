"""``python -m cli discord commands``: Relay's slash commands bulk-overwritten per scope, only
when they differ, against a fake Discord on 127.0.0.1 that keeps what is registered."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from cli.main import main
from relay_commands import commands_of
from relay_settings import PROJECT_ROOT, get_settings
from tests.fake_discord import FakeDiscord, nothing_logged_holds
from tests.fake_discord_commands import FakeCommands

APPLICATION = "900000000000000001"
TOKEN = "MTIz.bot-token-that-must-never-show.XyZ"
GUILD = "700000000000000001"
OTHER_GUILD = "700000000000000002"


def relay_json(*sets: str, guild: bool = False) -> list[dict]:
    """What relay_commands says Discord must receive for ``sets``, globally or in a guild
    (no ``contexts`` there: Discord keeps it for global commands only)."""
    return [command.to_discord(in_guild=guild) for command in commands_of(sets)]


@pytest.fixture
def discord(relay_env) -> Iterator[FakeCommands]:
    """A fake Discord with the application's commands endpoints; Relay's settings point at
    it with the right application id and token."""
    with FakeDiscord() as fake:
        commands = FakeCommands(fake, APPLICATION, TOKEN, guilds={GUILD, OTHER_GUILD})
        relay_env(
            DISCORD_API_URL=fake.api_url,
            DISCORD_APPLICATION_ID=APPLICATION,
            DISCORD_BOT_TOKEN=TOKEN,
            DISCORD_COMMANDS=f"global=chat,transcribe;{GUILD}=admin",
        )
        yield commands


def run(capsys, *options: str) -> tuple[int, str, str]:
    """The command as a person runs it (in this process): exit code, stdout, stderr."""
    code = main(["discord", "commands", *options])
    out, err = capsys.readouterr()
    return code, out, err


def test_first_run_puts_relay_commands_json_and_a_second_run_only_reads(discord, capsys):
    code, out, err = run(capsys)
    assert (code, err) == (0, "")
    writes = {call.scope: call.body for call in discord.writes()}
    assert writes == {
        None: relay_json("chat", "transcribe"),
        GUILD: relay_json("admin", guild=True),
    }
    assert all("contexts" not in command for command in writes[GUILD])
    assert [c["contexts"] for c in writes[None]] == [[0]] * 3  # no DMs: not allowed here
    assert {call.authorization for call in discord.calls} == {f"Bot {TOKEN}"}
    assert out.splitlines() == [
        "global: added chat, transcribe, status; wrote 3 commands: chat, transcribe, status",
        f"guild {GUILD}: added stats; wrote 1 command: stats",
    ]
    ids = {c["name"]: c["id"] for c in discord.registered[None] + discord.registered[GUILD]}

    discord.calls.clear()
    code, out, err = run(capsys)
    assert (code, err) == (0, "")
    assert [(call.method, call.scope) for call in discord.calls] == [("GET", None), ("GET", GUILD)]
    assert out.splitlines() == [
        "global: unchanged (3 commands: chat, transcribe, status)",
        f"guild {GUILD}: unchanged (1 command: stats)",
    ]
    assert ids == {c["name"]: c["id"] for c in discord.registered[None] + discord.registered[GUILD]}


def test_a_guild_given_another_set_is_the_only_scope_written(discord, relay_env, capsys):
    assert run(capsys)[0] == 0
    discord.calls.clear()
    relay_env(
        DISCORD_COMMANDS=f"global=chat,transcribe;{GUILD}=admin,media;{OTHER_GUILD}=media",
        DISCORD_GUILDS=GUILD,
    )
    code, out, _ = run(capsys)
    assert code == 0
    assert [(call.method, call.scope) for call in discord.writes()] == [
        ("PUT", GUILD),
        ("PUT", OTHER_GUILD),
    ]
    assert discord.writes()[0].body == relay_json("admin", "media", guild=True)
    assert discord.writes()[1].body == relay_json("media", guild=True)
    assert out.splitlines() == [
        "global: unchanged (3 commands: chat, transcribe, status)",
        f"guild {GUILD}: added image, video; wrote 3 commands: image, video, stats",
        f"guild {OTHER_GUILD}: added image, video; wrote 2 commands: image, video",
        f"note: guild {OTHER_GUILD} is not in RELAY_DISCORD_GUILDS, so Relay refuses its commands",
    ]


def test_a_changed_and_a_foreign_command_are_put_right_and_named(discord, capsys):
    # Someone edited /chat's description elsewhere and registered /legacy; /status is missing.
    registered = relay_json("chat", "transcribe")
    registered[0]["description"] = "An older description"
    registered = [c for c in registered if c["name"] != "status"]
    registered.append({"name": "legacy", "type": 1, "description": "Gone", "options": []})
    discord.registered[None] = discord.discord_shaped(None, registered)
    discord.registered[GUILD] = discord.discord_shaped(GUILD, relay_json("admin", guild=True))

    code, out, _ = run(capsys)
    assert code == 0
    assert [(call.scope, call.body) for call in discord.writes()] == [
        (None, relay_json("chat", "transcribe"))
    ]
    assert out.splitlines()[0] == (
        "global: added status; changed chat (description); removed legacy; "
        "wrote 3 commands: chat, transcribe, status"
    )
    assert [c["name"] for c in discord.registered[None]] == ["chat", "transcribe", "status"]


def test_an_answer_that_does_not_keep_what_was_sent_is_a_warning(discord, capsys):
    discord.drops = {"contexts"}  # a Discord that does not keep a field Relay sets
    code, out, _ = run(capsys)
    assert code == 0
    assert out.splitlines()[0] == (
        "global: warning: Discord's answer differs in chat (contexts), status (contexts), "
        "transcribe (contexts)"
    )


def test_check_compares_and_writes_nothing(discord, capsys):
    code, out, _ = run(capsys, "--check")
    assert code == 1 and discord.writes() == []
    assert f"guild {GUILD}: added stats; not written (--check)" in out.splitlines()
    assert run(capsys)[0] == 0
    assert run(capsys, "--check")[0] == 0


def test_a_refused_token_is_a_clear_error_that_never_shows_the_token(
    discord, relay_env, capsys, caplog
):
    wrong = "MTIz.a-wrong-token-also-secret.AbC"
    relay_env(DISCORD_BOT_TOKEN=wrong)
    with nothing_logged_holds(caplog, wrong):
        code, out, err = run(capsys)
    assert code == 1
    assert err.startswith("error: global: GET commands: the bot token was refused (HTTP 401")
    assert "RELAY_DISCORD_BOT_TOKEN" in err
    assert wrong not in out + err and TOKEN not in out + err
    assert discord.writes() == [] and [c.status for c in discord.calls] == [401]


def test_the_token_is_never_printed_or_logged(discord, capsys, caplog):
    discord.rate_limit("body")
    with nothing_logged_holds(caplog, TOKEN):
        code, out, err = run(capsys)
        discord.guilds = {OTHER_GUILD}  # the application left GUILD: Discord answers 403
        discord.registered.clear()
        code_refused, out_refused, err_refused = run(capsys)
    assert (code, code_refused) == (0, 1)
    assert f"is the application in guild {GUILD}" in err_refused
    assert TOKEN not in out + err + out_refused + err_refused
    assert "MTIz" not in out + err + out_refused + err_refused  # not even a part of it


def test_rate_limits_are_waited_out_and_retried(discord, capsys):
    discord.rate_limit("body", "header", retry_after=0.3)
    code, out, _ = run(capsys)
    assert code == 0
    first, second, third = discord.calls[:3]
    assert [c.status for c in (first, second, third)] == [429, 429, 200]
    assert second.received_at - first.received_at >= 0.3  # retry_after in the body
    assert third.received_at - second.received_at >= 0.3  # Retry-After alone
    assert out.count("global: GET commands: HTTP 429; retrying in 0.3 s") == 2
    assert {call.scope: call.body for call in discord.writes()} == {
        None: relay_json("chat", "transcribe"),
        GUILD: relay_json("admin", guild=True),
    }


def test_endless_or_long_rate_limits_stop_with_a_clear_error(discord, capsys):
    discord.rate_limit(*["header"] * 5, retry_after=0.01)
    code, _, err = run(capsys)
    assert code == 1
    assert err.strip() == "error: global: GET commands: HTTP 429 after 5 tries"
    discord.calls.clear()
    discord.rate_limit("body", retry_after=3600)
    code, _, err = run(capsys)
    assert code == 1 and len(discord.calls) == 1
    assert "Discord rate-limits this for 3600 s" in err


def test_missing_application_or_token_is_exit_2_naming_both(discord, relay_env, capsys):
    relay_env(DISCORD_APPLICATION_ID="", DISCORD_BOT_TOKEN="")
    code, out, err = run(capsys)
    assert code == 2 and out == "" and discord.calls == []
    lines = err.splitlines()
    assert lines[0].startswith("error: RELAY_DISCORD_APPLICATION_ID is not set")
    assert lines[1].startswith("error: RELAY_DISCORD_BOT_TOKEN is not set")


def test_a_bad_commands_setting_is_exit_2_naming_the_part(discord, monkeypatch, capsys):
    monkeypatch.setenv("RELAY_DISCORD_COMMANDS", f"global=chat;{GUILD}=admin,medya")
    get_settings.cache_clear()
    code, _, err = run(capsys)
    assert code == 2 and discord.calls == []
    assert err == (
        f"error: RELAY_DISCORD_COMMANDS: unknown command set 'medya' in '{GUILD}=admin,medya'; "
        "the sets are chat, media, transcribe, admin\n"
    )


def test_the_module_entry_point_registers_as_make_runs_it(discord):
    env = {key: value for key, value in os.environ.items() if key.startswith("RELAY_")}
    env = {**env, "PATH": os.environ["PATH"], "RELAY_DISCORD_COMMANDS": "global=media"}
    done = subprocess.run(
        [sys.executable, "-m", "cli", "discord", "commands"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "global: added image, video; wrote 2 commands: image, video"
    ]
    assert TOKEN not in done.stdout + done.stderr
    assert [call.body for call in discord.writes()] == [relay_json("media")]


def test_commands_show_in_the_bots_direct_messages_only_where_relay_answers_there():
    from deployments.discord_commands import wanted_commands
    from relay_discord import parse_command_scopes

    scope, guild = parse_command_scopes(f"global=chat,admin;{GUILD}=media")
    assert {c["name"]: c["contexts"] for c in wanted_commands(scope, dms=True)} == {
        "chat": [0, 1],
        "stats": [0],  # an admin's command: never in DMs
    }
    assert all(c["contexts"] == [0] for c in wanted_commands(scope, dms=False))
    assert all("contexts" not in c for c in wanted_commands(guild, dms=True))
