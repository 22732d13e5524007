"""Sealing secrets (webhook URLs with their tokens) before they go into the job store."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken

from relay_settings import DEFAULT_STATE_DIR, get_settings

KEY_FILE = DEFAULT_STATE_DIR / "secret.key"


@lru_cache(maxsize=4)
def _fernet(secret: str) -> Fernet:
    if secret:
        return Fernet(base64.urlsafe_b64encode(hashlib.sha256(secret.encode()).digest()))
    if not KEY_FILE.exists():
        KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it a moment ago
            time.sleep(0.2)
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(Fernet.generate_key())
    return Fernet(KEY_FILE.read_bytes().strip())


def seal(value: str) -> str:
    """``value`` encrypted and authenticated with the store's secret key."""
    return _fernet(get_settings().secret_key.get_secret_value()).encrypt(value.encode()).decode()


def unseal(token: str) -> str:
    """The sealed value; ``ValueError`` if it was sealed with another key or altered."""
    try:
        return (
            _fernet(get_settings().secret_key.get_secret_value()).decrypt(token.encode()).decode()
        )
    except InvalidToken:
        raise ValueError(
            "cannot unseal a stored webhook URL: RELAY_SECRET_KEY differs from the one "
            "that sealed it"
        ) from None


def signing_key() -> bytes:
    """Key for signed links, derived from the same secret (never the sealing key itself)."""
    secret = get_settings().secret_key.get_secret_value()
    if not secret:
        _fernet(secret)  # makes the key file on first use
        secret = KEY_FILE.read_bytes().decode().strip()
    return hashlib.sha256(f"relay-signed-links:{secret}".encode()).digest()
