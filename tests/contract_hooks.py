"""schemathesis hooks for tests/test_contract.py (loaded through SCHEMATHESIS_HOOKS).

A positive case should be a request a correct client could send. Three values the schema
cannot pin down are made so:

- Random bytes are never media, so an upload would only ever be refused and the stateful
  phase could not follow a job's links: half the schema-valid uploads carry real speech
  instead, and half the JSON submissions name a real file inside the allowed folder.
- A generated ``callback_url`` names a host that does not resolve (nothing resolves here),
  which Relay refuses at intake (422, checked after DNS): positive cases name a local
  receiver the test allows (RELAY_CALLBACK_ALLOW_PRIVATE). tests/test_callbacks*.py cover
  the refusals.
- A generated ``Idempotency-Key`` repeats across different requests, which Relay rightly
  refuses (422), and a repeat of an earlier request is answered with that request's job
  even after it was deleted: positive cases send a fresh key each, as a client does for a
  new request. tests/test_idempotency.py covers replays and refusals. An interaction's id is
  its key, so positive interactions get a fresh id each, as Discord gives them.

Every call to the Discord interactions endpoint is signed as Discord signs it (Ed25519 over
the timestamp and the exact bytes sent, with the key in RELAY_CONTRACT_DISCORD_KEY), so the
phases reach past the signature check; tests/test_interactions.py covers the 401s.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from pathlib import Path

import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import strategies as st
from requests import PreparedRequest
from requests.auth import AuthBase
from schemathesis.generation.modes import GenerationMode
from schemathesis.transport.serialization import Binary

SPEECH = Path(__file__).parent / "data" / "weather.mp3"
UPLOAD = "/api/transcriptions"
INTERACTIONS = "/api/discord/interactions"
CREATING = {UPLOAD, "/api/bot/requests"}
_interaction_ids = itertools.count(1_400_000_000_000_000_000 + time.time_ns() % 10**15)


class DiscordSignature(AuthBase):
    """Signs a prepared request's final bytes as Discord does."""

    def __init__(self, private_key_hex: str) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(private_key_hex))

    def __call__(self, request: PreparedRequest) -> PreparedRequest:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        stamp = str(int(time.time()))
        request.headers["X-Signature-Timestamp"] = stamp
        request.headers["X-Signature-Ed25519"] = self.key.sign(stamp.encode() + raw).hex()
        return request


def _positive_post(case, paths: set[str]) -> bool:
    return (
        case.operation.method.upper() == "POST"
        and case.operation.path in paths
        and case.meta is not None
        and case.meta.generation.mode == GenerationMode.POSITIVE
    )


def _set_body(case, body) -> None:
    # Set directly: schemathesis would re-validate a changed body and cannot validate binary
    # parts (any bytes are a valid `format: binary` file), calling the case negative.
    object.__setattr__(case, "body", body)


@schemathesis.hook
def map_case(context, case):  # noqa: ARG001 - the hook's signature; runs in every phase
    """A reachable callback_url and a fresh Idempotency-Key in positive POSTs; a fresh id in
    positive interactions."""
    if _positive_post(case, {INTERACTIONS}) and isinstance(case.body, dict):
        _set_body(case, {**case.body, "id": str(next(_interaction_ids))})
        return case
    if not _positive_post(case, CREATING):
        return case
    if isinstance(case.body, dict) and case.body.get("callback_url") is not None:
        _set_body(case, {**case.body, "callback_url": os.environ["RELAY_CONTRACT_CALLBACK"]})
    if case.headers and "Idempotency-Key" in case.headers:
        case.headers["Idempotency-Key"] = uuid.uuid4().hex
    return case


@schemathesis.hook
def flatmap_case(context, case):  # noqa: ARG001 - the hook's signature; fuzzing, stateful
    """Offer real media for half the positive uploads."""
    if not _positive_post(case, {UPLOAD}) or not isinstance(case.body, dict):
        return st.just(case)
    if case.media_type == "multipart/form-data":
        real = {**case.body, "file": Binary(SPEECH.read_bytes())}  # what it generates
    else:
        real = {**case.body, "path": os.environ["RELAY_CONTRACT_MEDIA"]}

    def choose(use_real: bool):
        if use_real:
            _set_body(case, real)
        return case

    return st.booleans().map(choose)


@schemathesis.hook
def before_call(context, case, kwargs):  # noqa: ARG001 - the hook's signature
    """Sign every call of the interactions endpoint, positive or not, as Discord would."""
    if case.operation.path == INTERACTIONS:
        kwargs["auth"] = DiscordSignature(os.environ["RELAY_CONTRACT_DISCORD_KEY"])
