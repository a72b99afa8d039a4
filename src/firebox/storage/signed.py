"""Signed, expiring URLs for uploads and downloads that Firebox serves itself.

The fireworks-ai SDK uploads large files with a plain ``PUT`` to a URL the
server hands out (``:getUploadEndpoint``), sending no API key; downloads work
the same way. The URL therefore carries its own authority: an HMAC-SHA256 over
what it allows (method, storage key, exact size for an upload, the account,
the expiry). Nothing is stored per URL, so any gateway replica that shares
the key (``FIREBOX_URL_SIGNING_KEY``) can serve it, and a URL cannot be
widened to another file, a larger size or a later time without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from firebox.clock import Clock
from firebox.errors import PermissionDenied
from firebox.private_files import FILE_MODE, private_dir
from firebox.storage.blobs import check_key

Method = Literal["PUT", "GET"]
URL_PREFIX = "/v1/storage/"


@dataclass(frozen=True, slots=True)
class SignedObject:
    """What one signed URL allows."""

    method: Method
    key: str
    account_id: str
    size: int | None  # the exact byte count an upload must have; None for downloads
    expires: int  # unix seconds


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UrlSigner:
    """Makes and checks signed storage URLs (paths; the caller adds the public base)."""

    def __init__(self, secret: bytes, clock: Clock) -> None:
        if len(secret) < 32:
            raise ValueError("the URL signing key must be at least 32 bytes")
        self._secret = secret
        self._clock = clock

    def _now(self) -> int:
        return int(self._clock.now().timestamp())

    def sign(
        self, method: Method, key: str, account_id: str, *, size: int | None, ttl_s: int
    ) -> str:
        """The path of a URL allowing ``method`` on ``key`` for ``ttl_s`` seconds."""
        body = {
            "m": method,
            "k": check_key(key),
            "a": account_id,
            "s": size,
            "e": self._now() + ttl_s,
        }
        payload = _b64(orjson.dumps(body))
        mac = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        return f"{URL_PREFIX}{payload}.{_b64(mac)}"

    def verify(self, token: str, method: Method) -> SignedObject:
        """What ``token`` allows, if its signature holds, it is unexpired and for ``method``."""
        refused = PermissionDenied(
            "This storage URL is not valid; ask the API for a new upload or download URL.",
            code="invalid_signed_url",
        )
        payload, _, mac_text = token.partition(".")
        try:
            mac = _unb64(mac_text)
            body = orjson.loads(_unb64(payload))
        except (ValueError, orjson.JSONDecodeError):
            raise refused from None
        wanted = hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(mac, wanted) or not isinstance(body, dict):
            raise refused
        signed = SignedObject(
            method=body["m"], key=body["k"], account_id=body["a"], size=body["s"], expires=body["e"]
        )
        if signed.method != method:
            raise PermissionDenied(
                f"This URL allows {signed.method}, not {method}.", code="invalid_signed_url"
            )
        if signed.expires < self._now():
            raise PermissionDenied(
                "This storage URL has expired; ask the API for a new one.",
                code="signed_url_expired",
            )
        return signed


def signing_secret(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, or one generated once and kept (0600) in the data dir.

    Replicas of a scale-out gateway must share ``FIREBOX_URL_SIGNING_KEY``:
    each would otherwise generate its own and refuse the others' URLs.
    """
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    path = private_dir(data_dir) / "url-signing.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return bytes.fromhex(path.read_text().strip())
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())
