"""The operator key rule: at least 32 characters and 128 estimated bits, refused at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from firebox.key_strength import estimated_bits, weakness
from firebox.settings import Settings
from tests.conftest import OPERATOR_KEY

# Drawn once with secrets.token_urlsafe(32) and secrets.token_hex(32): fixed, so the test is too.
URLSAFE = "y6gtyschugU7odkR1f4cOWqHlBG93npg_h4G5QKUx08"
HEX64 = "a7f23b60e538c16fba0479f7195c212b7548e478ade2c9b4cda57930566c0996"


@pytest.mark.parametrize("key", [URLSAFE, HEX64, OPERATOR_KEY])
def test_random_keys_pass(key: str) -> None:
    assert weakness(key) is None
    assert Settings(admin_key=key).admin_key == key


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "a" * 64,  # long, but one character: 0 bits
        "abababababababababababababababab",  # 32 characters, 32 bits
        URLSAFE[:20],  # random, too short
        "7ecbca9efab50462538d9eda502e977a",  # token_hex(16): about 120 bits estimated
    ],
)
def test_weak_keys_are_refused_at_start(key: str) -> None:
    assert weakness(key) is not None
    with pytest.raises(ValidationError) as raised:
        Settings(admin_key=key)
    message = str(raised.value)
    assert "FIREBOX_ADMIN_KEY is too weak" in message
    assert "secrets.token_urlsafe(32)" in message  # says what to do


def test_the_estimate() -> None:
    assert estimated_bits("") == 0
    assert estimated_bits("a" * 100) == 0
    assert estimated_bits("ab" * 16) == pytest.approx(32)
    assert estimated_bits("0123456789abcdef" * 2) == pytest.approx(128)


def test_unset_or_empty_means_generated() -> None:
    assert Settings().admin_key is None
    assert Settings(admin_key="").admin_key is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"])
def test_the_development_flag_allows_a_weak_key_on_loopback(host: str) -> None:
    settings = Settings(admin_key="a", allow_weak_admin_key=True, host=host)
    assert settings.admin_key == "a"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "gateway.example.com"])
def test_the_development_flag_is_refused_off_loopback(host: str) -> None:
    with pytest.raises(ValidationError, match="the host is not loopback"):
        Settings(admin_key="a", allow_weak_admin_key=True, host=host)


def test_the_development_flag_is_refused_in_production() -> None:
    with pytest.raises(ValidationError, match="FIREBOX_ALLOW_WEAK_ADMIN_KEY cannot be enabled"):
        Settings(
            admin_key=URLSAFE,
            allow_weak_admin_key=True,
            environment="production",
            payment_provider="stripe",
            stripe_api_key="sk_test_x",
        )


def test_the_flag_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREBOX_ADMIN_KEY", "a")
    monkeypatch.setenv("FIREBOX_ALLOW_WEAK_ADMIN_KEY", "1")
    monkeypatch.setenv("FIREBOX_HOST", "127.0.0.1")
    assert Settings().admin_key == "a"
    monkeypatch.setenv("FIREBOX_HOST", "0.0.0.0")
    with pytest.raises(ValidationError):
        Settings()
