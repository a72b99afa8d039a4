"""API key secrets: how they are made and how they are stored.

Keys are 240 bits of randomness, so a plain SHA-256 is a safe store (there is
nothing to brute-force) and allows an O(1) indexed lookup on every request,
which a salted slow hash would not.
"""

from __future__ import annotations

import hashlib
import secrets

KEY_PREFIX = "fb_"


def new_secret() -> str:
    """A fresh API key secret, shown to its owner once."""
    return KEY_PREFIX + secrets.token_urlsafe(30)


def new_key_id() -> str:
    """A public identifier for a key, used to list and delete it."""
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    """The stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The first characters of a secret, safe to show in listings."""
    return secret[:8]
