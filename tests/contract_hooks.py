"""schemathesis hooks for tests/test_contract.py (loaded through SCHEMATHESIS_HOOKS).

- Random bytes are never media, so an upload would only ever be refused and the stateful
  phase could not follow a job's links: half the schema-valid uploads carry real speech
  instead, and half the JSON submissions name a real file inside the allowed folder.
- A generated ``Idempotency-Key`` may repeat for a different request, which Relay rightly
  refuses (422): a positive case sends what a correct client sends, a key made from its
  request (tests/test_idempotency.py covers the refusal).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import schemathesis
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode
from schemathesis.transport.serialization import Binary

SPEECH = Path(__file__).parent / "data" / "weather.mp3"
KEYED = {"/api/transcriptions", "/api/bot/requests"}


@schemathesis.hook
def flatmap_case(context, case):  # noqa: ARG001 - the hook's signature
    """Real media for half the positive uploads; keys that belong to their request."""
    if (
        case.operation.method.upper() != "POST"
        or case.operation.path not in KEYED
        or case.meta is None
        or case.meta.generation.mode != GenerationMode.POSITIVE
    ):
        return st.just(case)
    if case.operation.path != "/api/transcriptions" or not isinstance(case.body, dict):
        return st.just(_keyed(case))
    if case.media_type == "multipart/form-data":
        real = {**case.body, "file": Binary(SPEECH.read_bytes())}  # what it generates
    else:
        real = {**case.body, "path": os.environ["RELAY_CONTRACT_MEDIA"]}

    def choose(use_real: bool):
        if use_real:
            # Any bytes are a valid `format: binary` file, so the case stays positive; set
            # directly, as schemathesis would otherwise re-validate the body and cannot
            # validate binary parts (it would call the case negative).
            object.__setattr__(case, "body", real)
        return _keyed(case)

    return st.booleans().map(choose)


def _keyed(case):
    """The case with its Idempotency-Key (if it sends one) derived from its body."""
    if case.headers and "Idempotency-Key" in case.headers:
        body = case.body
        if isinstance(body, dict):
            body = {k: v.data if isinstance(v, Binary) else v for k, v in body.items()}
        case.headers["Idempotency-Key"] = hashlib.sha256(repr(body).encode()).hexdigest()
    return case
