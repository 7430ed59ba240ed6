"""Generation and hashing of the secrets Tokios hands out (API keys, connector tokens).

Both carry ~240 bits of randomness, so a single SHA-256 is the right hash: a slow password hash
would add milliseconds to every request and buys nothing against a secret that cannot be guessed.
"""

from __future__ import annotations

import hashlib
import secrets

API_KEY_PREFIX = "sk-tokios-"
CONNECTOR_TOKEN_PREFIX = "ctk-tokios-"
DISPLAY_CHARS = 8


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> tuple[str, str, str]:
    """Return (secret, display prefix, hash). The secret is shown once and never stored."""
    secret = prefix + secrets.token_urlsafe(30)
    return secret, secret[: len(prefix) + DISPLAY_CHARS], hash_secret(secret)
