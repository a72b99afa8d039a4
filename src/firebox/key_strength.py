"""How guessable the operator key is, estimated from the key alone.

The operator key (``FIREBOX_ADMIN_KEY``) opens every account, so a short or
repetitive one is refused at start. The estimate is the key's length times
the Shannon entropy of its own character frequencies (bits per character):
``aaaa…`` scores 0 whatever its length, a 43-character
``secrets.token_urlsafe(32)`` scores about 210 bits (never under 180 in
20 000 draws). It is an estimate from one sample, so it errs low: a
32-character hex key (128 random bits) scores about 115 and is refused; use
``token_urlsafe(32)`` or ``token_hex(32)``.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter

MIN_LENGTH = 32
MIN_BITS = 128
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


def estimated_bits(key: str) -> float:
    """Length times the Shannon entropy per character of ``key``'s character frequencies."""
    if not key:
        return 0.0
    n = len(key)
    per_char = -sum(c / n * math.log2(c / n) for c in Counter(key).values())
    return n * per_char


def weakness(key: str) -> str | None:
    """Why ``key`` is too weak to be the operator key, or None."""
    bits = estimated_bits(key)
    if len(key) >= MIN_LENGTH and bits >= MIN_BITS:
        return None
    return (
        f"FIREBOX_ADMIN_KEY is too weak ({len(key)} characters, about {bits:.0f} bits "
        f"estimated; at least {MIN_LENGTH} characters and {MIN_BITS} bits are required). "
        f"Generate one with `{GENERATE}`, or unset it and Firebox generates one "
        "(saved in <data dir>/credentials.json). For a trial on this machine only, "
        "FIREBOX_ALLOW_WEAK_ADMIN_KEY=1 accepts it while FIREBOX_HOST is a loopback address"
    )


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
