"""The REST API keeps its OpenAPI contract under any input: schemathesis, every check and
every phase (stateful links included), against the real API process on real PostgreSQL and
the real Prefect server. Its configuration is tests/schemathesis.toml."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prefect.settings import PREFECT_API_URL

from blocks.discord import DiscordDestination
from tests.audio import DATA, ROOT
from tests.discord_signing import APPLICATION_ID, DiscordSigner
from tests.environ import environment
from tests.fake_discord import FakeDiscord
from tests.pg import create_database, drop_database

pytestmark = pytest.mark.usefixtures("prefect_server")
TOKEN = "contract-token"
# Every link the document declares, with the statuses that show it was followed to a
# resource that exists (a job just created is not completed: its transcript is a 409).
DECLARED_LINKS = {
    "POST /api/transcriptions -> [202] status": {200},
    "POST /api/transcriptions -> [202] transcript": {200, 409},
    "POST /api/transcriptions -> [202] cancel": {200},
    "POST /api/transcriptions -> [202] delete": {200},
    "POST /api/bot/requests -> [202] status": {200},
    "GET /api/batches/latest -> [200] batch": {200},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def alerts_discord() -> Iterator[FakeDiscord]:
    """The alerts destination POST /api/alerts posts to: a fake Discord, saved as a block."""
    with FakeDiscord() as fake, environment({"RELAY_WEBHOOK_ALLOWED_HOSTS": fake.host}):
        DiscordDestination(webhook_url=fake.url_for()).save("contract-alerts", overwrite=True)
        yield fake


@pytest.fixture(scope="module")
def api(tmp_path_factory, alerts_discord) -> Iterator[tuple[str, dict[str, str]]]:
    """``python -m cli api`` on a fresh PostgreSQL database holding one video batch, taking
    Discord interactions signed with a key pair made here."""
    signer = DiscordSigner()
    name, url = create_database("relay_contract")
    data = tmp_path_factory.mktemp("contract")
    inbox = data / "inbox"
    inbox.mkdir()
    shutil.copy(DATA / "weather.mp3", inbox / "weather.mp3")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "RELAY_DATABASE_URL": url,
        "RELAY_DATA_DIR": str(data),
        "RELAY_SOURCE_ROOTS": str(inbox),
        "RELAY_API_TOKEN": TOKEN,
        "RELAY_DISCORD_ALERTS_BLOCK": "contract-alerts",
        "RELAY_WEBHOOK_ALLOWED_HOSTS": alerts_discord.host,
        "RELAY_API_PORT": str(port),
        "RELAY_TRANSCRIBE_VIA": "task-worker",  # a job is a real task run, left queued
        "RELAY_CONTRACT_MEDIA": str(inbox / "weather.mp3"),
        # Callbacks go to a closed port on this host: refused connections, retried, recorded.
        "RELAY_CALLBACK_SIGNING_KEY": "whsec_" + base64.b64encode(b"k" * 32).decode(),
        "RELAY_CALLBACK_ALLOW_PRIVATE": "true",
        "RELAY_CONTRACT_CALLBACK": f"http://127.0.0.1:{_free_port()}/relay-callback",
        # Interactions are signed by the hooks with the private half (tests/contract_hooks.py).
        "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
        "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
        "RELAY_CONTRACT_DISCORD_KEY": signer.private_key_hex,
    }
    seed = "from store.batches import start_batch; start_batch(2, 'contract')"
    subprocess.run([sys.executable, "-c", seed], cwd=ROOT, env=env, check=True)
    log = data / "api.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "api"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the API never became healthy"
        time.sleep(0.2)
    yield base, env
    process.terminate()
    process.wait(timeout=30)
    drop_database(name)


def links_followed(report: Path) -> dict[str, set[int]]:
    """Declared links the stateful phase followed, with the statuses the targets answered."""
    followed: dict[str, set[int]] = {}
    for line in report.read_text().splitlines():
        event = json.loads(line).get("ScenarioFinished")
        if not event or event.get("phase") != "stateful":
            continue
        recorder = event["recorder"]
        # A scenario that made no call (a step skipped, say) records no cases.
        for case_id, case in recorder.get("cases", {}).items():
            transition = case.get("transition")
            if not (transition and case.get("is_transition_applied")):
                continue
            if transition["is_inferred"]:
                continue
            link = transition["id"].rsplit(" -> ", 1)[0]
            response = (recorder.get("interactions", {}).get(case_id) or {}).get("response")
            if response:
                followed.setdefault(link, set()).add(response["status_code"])
    return followed


def test_every_operation_keeps_its_contract(api, tmp_path):
    base, env = api
    report = tmp_path / "events.ndjson"
    command = [
        str(Path(sys.executable).parent / "st"),
        "--config-file",
        str(ROOT / "tests" / "schemathesis.toml"),
        "run",
        f"{base}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--report",
        "ndjson",
        "--report-ndjson-path",
        str(report),
        "--no-color",
    ]
    hooks = {**env, "SCHEMATHESIS_HOOKS": "tests.contract_hooks"}
    run = subprocess.run(command, cwd=ROOT, env=hooks, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert "Stateful" in run.stdout and "Fuzzing" in run.stdout and "Coverage" in run.stdout

    followed = links_followed(report)
    for link, statuses in DECLARED_LINKS.items():
        assert followed.get(link, set()) & statuses, (link, followed.get(link))
