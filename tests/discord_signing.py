"""Signing interactions as Discord does: Ed25519 over the timestamp and the raw body, with a
key pair made for the test (the public half is the app's RELAY_DISCORD_PUBLIC_KEY)."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

APPLICATION_ID = "900000000000000001"
DISCORD_EPOCH_MS = 1420070400000
_sequence = itertools.count(1)


def snowflake(at: float | None = None) -> str:
    """A Discord id minted at ``at`` (Unix seconds; now by default), as Discord's are: the
    milliseconds since 2015 above 22 bits of worker, process and sequence."""
    moment = time.time() if at is None else at
    milliseconds = int(moment * 1000) - DISCORD_EPOCH_MS
    return str((milliseconds << 22) | (next(_sequence) & 0x3FFFFF))


@dataclass
class DiscordSigner:
    """A Discord application's key pair, and interactions signed with it."""

    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_key(self) -> str:
        """The hex public key, as Discord's developer portal shows it."""
        return self.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()

    @property
    def private_key_hex(self) -> str:
        """The private half (raw, hex), for a signer in another process."""
        return self.key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()).hex()

    def headers(self, body: bytes, timestamp: float | None = None) -> dict[str, str]:
        """The signature headers Discord sends with ``body``."""
        stamp = str(int(time.time() if timestamp is None else timestamp))
        signature = self.key.sign(stamp.encode() + body).hex()
        return {
            "X-Signature-Ed25519": signature,
            "X-Signature-Timestamp": stamp,
            "Content-Type": "application/json",
        }


def command(
    name: str,
    options: dict[str, Any] | None = None,
    *,
    user: str = "4001",
    guild: str | None = "700000000000000001",
    channel: str = "chat-general",
    permissions: int = 0,
    interaction_id: str | None = None,
    token: str | None = None,
    attachments: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A slash command interaction as Discord sends it (in a guild, or a DM with no guild).
    ``attachments`` (option name -> Discord attachment object) become ATTACHMENT options
    whose values are the attachments' ids, resolved in ``data.resolved.attachments``."""
    ident = interaction_id or snowflake()
    body: dict[str, Any] = {
        "id": ident,
        "application_id": APPLICATION_ID,
        "type": 2,
        "token": token or f"interaction-token-{ident}-do-not-leak",
        "version": 1,
        "data": {
            "id": "800000000000000001",
            "name": name,
            "type": 1,
            "options": [{"name": k, "type": 3, "value": v} for k, v in (options or {}).items()],
        },
        "channel_id": "600000000000000001",
        "channel": {"id": "600000000000000001", "name": channel, "type": 0},
    }
    for option, attachment in (attachments or {}).items():
        body["data"]["options"].append({"name": option, "type": 11, "value": attachment["id"]})
        resolved = body["data"].setdefault("resolved", {}).setdefault("attachments", {})
        resolved[attachment["id"]] = attachment
    if guild is None:  # a direct message: its channel has no name
        body["user"] = {"id": user, "username": f"user{user}"}
        body["channel"] = {"id": body["channel_id"], "type": 1}
    else:
        body["guild_id"] = guild
        body["member"] = {
            "user": {"id": user, "username": f"user{user}"},
            "permissions": str(permissions),
        }
    return body


INTERACTIONS = "/api/discord/interactions"


def signed_post(client: Any, signer: DiscordSigner, body: dict[str, Any], **sign: float) -> Any:
    """POST ``body`` to the interactions endpoint as Discord does, signed by ``signer``
    (``timestamp=`` to sign at another time), with any client that has ``post`` (a
    TestClient, an ``httpx.Client`` with a base URL); returns its response."""
    raw = encoded(body)
    return client.post(INTERACTIONS, content=raw, headers=signer.headers(raw, **sign))


def encoded(body: dict[str, Any]) -> bytes:
    """The body's bytes, as signed and sent."""
    return json.dumps(body, separators=(",", ":")).encode()
