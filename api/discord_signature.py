"""Discord's interaction signatures: Ed25519 over ``X-Signature-Timestamp`` + the raw body,
under the application's public key (``RELAY_DISCORD_PUBLIC_KEY``)."""

from __future__ import annotations

import time
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

NO_SIGNATURE = "the X-Signature-Ed25519 and X-Signature-Timestamp headers are required"
MAX_AGE_SECONDS = 300.0  # an older (or further future) timestamp is a replay


class SignatureError(Exception):
    """Why an interaction is not Discord's; the message is safe to return to the caller."""


@lru_cache(maxsize=4)
def _public_key(hex_key: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))


def verify_interaction(
    public_key: str,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: float | None = None,
) -> None:
    """Raise ``SignatureError`` unless ``signature`` (hex) signs ``timestamp`` + ``body``
    under ``public_key`` (hex) and ``timestamp`` (Unix seconds) is within 5 minutes of ``now``."""
    if not signature or not timestamp:
        raise SignatureError(NO_SIGNATURE)
    try:
        signed_at = float(timestamp)
        raw_signature = bytes.fromhex(signature)
    except ValueError:
        raise SignatureError("the signature headers are malformed") from None
    try:
        _public_key(public_key).verify(raw_signature, timestamp.encode() + body)
    except InvalidSignature:
        raise SignatureError("the signature does not match the body") from None
    if abs((time.time() if now is None else now) - signed_at) > MAX_AGE_SECONDS:
        raise SignatureError("the signature's timestamp is more than 5 minutes away: a replay")
