"""The blob store and the signed storage URLs, through the real routes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from firebox.clock import FakeClock
from firebox.errors import InvalidArgument, PayloadTooLarge, PermissionDenied
from firebox.services import Services
from firebox.storage.blobs import LocalBlobStore
from firebox.storage.signed import UrlSigner, signing_secret


def test_a_blob_appears_only_on_commit_and_files_are_private(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    writer = store.writer("datasets/acct/ds1/train.jsonl", max_bytes=10)
    writer.write(b"hello")
    assert store.size("datasets/acct/ds1/train.jsonl") is None
    assert writer.commit() == 5
    writer.abort()  # after commit: nothing to drop
    assert store.size("datasets/acct/ds1/train.jsonl") == 5
    path = store.local_path("datasets/acct/ds1/train.jsonl")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "blobs").stat().st_mode) == 0o700
    assert [b.key for b in store.list("datasets/acct/ds1")] == ["datasets/acct/ds1/train.jsonl"]
    assert store.delete_prefix("datasets/acct") == 1
    assert store.size("datasets/acct/ds1/train.jsonl") is None


def test_a_writer_refuses_the_first_byte_past_its_cap_and_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    writer = store.writer("m/a/weights.safetensors", max_bytes=4)
    writer.write(b"1234")
    with pytest.raises(PayloadTooLarge):
        writer.write(b"5")
    assert store.size("m/a/weights.safetensors") is None
    assert [p.name for p in (tmp_path / "m" / "a").iterdir()] == []


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "a//b", ".hidden/x", "a/b c", "/abs"])
def test_keys_that_could_escape_the_root_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InvalidArgument):
        LocalBlobStore(tmp_path).writer(key, max_bytes=1)


def test_signed_urls_bind_method_key_size_and_time(tmp_path: Path) -> None:
    clock = FakeClock()
    signer = UrlSigner(signing_secret(None, tmp_path), clock)
    path = signer.sign("PUT", "d/a/f.jsonl", "acct", size=12, ttl_s=60)
    token = path.rsplit("/", 1)[-1]
    signed = signer.verify(token, "PUT")
    assert (signed.key, signed.size, signed.account_id) == ("d/a/f.jsonl", 12, "acct")
    with pytest.raises(PermissionDenied):
        signer.verify(token, "GET")
    payload, _, mac = token.partition(".")
    with pytest.raises(PermissionDenied):
        signer.verify(payload[:-2] + "AA." + mac, "PUT")
    other = UrlSigner(signing_secret("another key of enough length " * 2, tmp_path), clock)
    with pytest.raises(PermissionDenied):
        other.verify(token, "PUT")
    clock.advance(timedelta(seconds=61))
    with pytest.raises(PermissionDenied) as expired:
        signer.verify(token, "PUT")
    assert expired.value.code == "signed_url_expired"
    # The generated key is kept, private, and reused.
    key_file = tmp_path / "url-signing.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert signing_secret(None, tmp_path) == signing_secret(None, tmp_path)


@pytest.fixture
def storage_client(services: Services) -> Iterator[TestClient]:
    from firebox.app import create_app

    services.settings.max_body_bytes = 1024  # uploads are bounded by their URL instead
    with TestClient(create_app(services)) as client:
        yield client


def _put_url(services: Services, key: str, size: int) -> str:
    return services.storage.signer.sign("PUT", key, "acct", size=size, ttl_s=600)


def test_upload_then_download_through_signed_urls(
    services: Services, storage_client: TestClient
) -> None:
    data = os.urandom(5000)  # larger than the body cap of other routes
    url = _put_url(services, "models/acct/m1/adapter_model.safetensors", len(data))
    put = storage_client.put(
        url,
        content=data,
        headers={"x-goog-content-length-range": f"{len(data)},{len(data)}"},
    )
    assert put.status_code == 200, put.text
    get_path = services.storage.signer.sign(
        "GET", "models/acct/m1/adapter_model.safetensors", "acct", size=None, ttl_s=60
    )
    got = storage_client.get(get_path)
    assert got.status_code == 200
    assert got.content == data


def test_an_upload_larger_or_smaller_than_signed_is_refused_and_nothing_is_stored(
    services: Services, storage_client: TestClient
) -> None:
    key = "datasets/acct/ds/f.jsonl"
    declared = storage_client.put(_put_url(services, key, 10), content=b"x" * 11)
    assert declared.status_code == 400
    assert declared.json()["error"]["code"] == "size_mismatch"

    def chunks() -> Iterator[bytes]:  # no Content-Length: streamed past the size
        for _ in range(4):
            yield b"x" * 8

    streamed = storage_client.put(_put_url(services, key, 10), content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "file_too_large"
    short = storage_client.put(_put_url(services, key, 10), content=b"x" * 4)
    assert short.status_code == 400
    assert services.storage.blobs.size(key) is None


def test_a_forged_or_wrong_method_url_is_refused(
    services: Services, storage_client: TestClient
) -> None:
    url = _put_url(services, "datasets/acct/ds/f.jsonl", 3)
    assert storage_client.put(url + "x", content=b"abc").status_code == 403
    assert storage_client.get(url).status_code == 403
    missing = services.storage.signer.sign("GET", "datasets/acct/none", "acct", size=None, ttl_s=60)
    assert storage_client.get(missing).status_code == 404


def test_a_large_declared_body_gets_a_longer_read_deadline() -> None:
    from firebox.http.connection_guard import ConnectionGuard

    guard = ConnectionGuard(
        header_timeout_s=10, body_timeout_s=60, max_per_client=0, min_body_bytes_per_s=1000
    )
    assert guard.body_limit_s([(b"content-length", b"500000")]) == 560
    assert guard.body_limit_s([(b"content-length", b"junk")]) == 60
    assert guard.body_limit_s([]) == 60
    flat = ConnectionGuard(header_timeout_s=10, body_timeout_s=60, max_per_client=0)
    assert flat.body_limit_s([(b"content-length", b"500000")]) == 60
