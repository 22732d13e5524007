"""Interactions benchmark: how fast Discord gets its first answer to a slash command, beside
the same request through the REST intake (its anchor, in the same run).

The stack of ``bench.bot`` (a ``prefect server start`` on PostgreSQL, the store on
PostgreSQL, ``python -m cli api``, two bot-chat task workers, a fake OpenAI answering in
300 ms, a fake Discord), plus the application's key pair. 50 signed ``/chat`` interactions
and 50 ``POST /api/bot/requests`` alternate, one every 0.4 s (one user each, so no cooldown
applies). Prints one JSON line per figure:

- ``deferred``: the POST until the deferred answer (type 5); Discord's limit is 3 s, the
  target p95 < 300 ms. ``rest_intake``: the same for the REST intake's 202.
- ``follow_up``: the POST until the answer reached the fake Discord (end to end).
- ``signature_verify``: one Ed25519 verification in this process (the endpoint's extra work).

Run: ``make bench-interactions`` or ``.venv/bin/python -m bench.interactions``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import httpx

from bench.bot import API_PORT, Bench, emit, percentiles
from tests.discord_signing import APPLICATION_ID, DiscordSigner, command, encoded


def _follow_up_times(bench: Bench, tokens: dict[str, float]) -> list[float]:
    arrived = {r.token: r.received_at for r in bench.discord.requests if r.method == "POST"}
    return [arrived[t] - sent for t, sent in tokens.items() if t in arrived]


def run(commands: int, spacing: float) -> None:
    """Alternate signed interactions and REST requests; print the figures."""
    signer = DiscordSigner()
    with tempfile.TemporaryDirectory(prefix="relay-bench-interactions-") as folder:
        bench = Bench(Path(folder))
        bench.env.update(
            {
                "RELAY_DISCORD_PUBLIC_KEY": signer.public_key,
                "RELAY_DISCORD_APPLICATION_ID": APPLICATION_ID,
                "RELAY_DISCORD_API_URL": bench.discord.api_url,
            }
        )
        try:
            bench.start(chat_workers=2)
            client = httpx.Client(base_url=f"http://127.0.0.1:{API_PORT}", timeout=30)
            deferred, rest, sent = [], [], {}
            for index in range(commands):
                body = command("chat", {"prompt": f"bench {index}"}, user=str(6000 + index))
                raw = encoded(body)
                started = time.monotonic()
                answer = client.post(
                    "/api/discord/interactions", content=raw, headers=signer.headers(raw)
                )
                deferred.append(time.monotonic() - started)
                sent[body["token"]] = started
                assert answer.json() == {"type": 5}, answer.text
                started = time.monotonic()
                answer = client.post(
                    "/api/bot/requests",
                    json={
                        "kind": "chat",
                        "prompt": f"rest {index}",
                        "user_id": str(7000 + index),
                        "channel": "chat-general",
                        "webhook_url": bench.discord.url_for("77", f"rest-{index}"),
                    },
                )
                rest.append(time.monotonic() - started)
                assert answer.status_code == 202, answer.text
                time.sleep(spacing)
            deadline = time.monotonic() + 60
            while len(_follow_up_times(bench, sent)) < commands and time.monotonic() < deadline:
                time.sleep(0.2)
            arrived = _follow_up_times(bench, sent)
            emit(figure="deferred", commands=commands, **percentiles(deferred), target_p95_ms=300)
            emit(figure="rest_intake", requests=commands, **percentiles(rest))
            emit(figure="follow_up", answered=len(arrived), of=commands, **percentiles(arrived))
            emit(figure="cpu_seconds", **bench.cpu_seconds())
        finally:
            bench.stop()
    _signature_cost(signer)


def _signature_cost(signer: DiscordSigner, rounds: int = 2000) -> None:
    from api.discord_signature import verify_interaction

    raw = encoded(command("chat", {"prompt": "x"}))
    headers = signer.headers(raw)
    args = (signer.public_key, headers["X-Signature-Ed25519"], headers["X-Signature-Timestamp"])
    started = time.perf_counter()
    for _ in range(rounds):
        verify_interaction(*args, raw)
    emit(figure="signature_verify", us=round(1e6 * (time.perf_counter() - started) / rounds, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=50)
    parser.add_argument("--spacing", type=float, default=0.4)
    options = parser.parse_args()
    run(options.commands, options.spacing)


if __name__ == "__main__":
    main()
