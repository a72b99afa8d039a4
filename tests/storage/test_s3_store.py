"""The S3-compatible blob store against a real S3 server (moto's, on a loopback port).

The same contract runs on the local store, so both behave alike; then a
dataset goes through the real routes with its files in the bucket.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer
from pydantic import SecretStr

from firebox.app import create_app
from firebox.clock import FakeClock
from firebox.errors import PayloadTooLarge
from firebox.server import initialize
from firebox.services import build_services
from firebox.settings import Settings
from firebox.storage.blobs import BlobStore, LocalBlobStore
from firebox.storage.s3 import MIN_PART_BYTES, S3BlobStore, build_s3_store
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.support.api import bearer, create_account, member_key
from tests.support.server import free_port

CREDENTIALS = {"access_key_id": "testing", "secret_access_key": "testing", "region": "us-east-1"}


@pytest.fixture(scope="module")
def s3_url() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _bucket(s3_url: str, tmp_path: Path, name: str) -> S3BlobStore:
    store = build_s3_store(
        bucket=name, cache_dir=tmp_path / "cache", endpoint_url=s3_url, prefix="fb", **CREDENTIALS
    )
    store.client.create_bucket(Bucket=name)
    return store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, s3_url: str, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    return _bucket(s3_url, tmp_path, f"contract-{tmp_path.name.lower()[-20:].strip('_-')}x")


def test_the_blob_store_contract(store: BlobStore) -> None:
    writer = store.writer("datasets/a/1/train.jsonl", max_bytes=100)
    writer.write(b'{"x": 1}\n')
    writer.write(b'{"x": 2}\n')
    assert store.size("datasets/a/1/train.jsonl") is None  # nothing before commit
    assert writer.commit() == 18
    writer.abort()  # after commit: nothing happens
    assert store.size("datasets/a/1/train.jsonl") == 18
    with store.open("datasets/a/1/train.jsonl") as stream:
        assert stream.readline() == b'{"x": 1}\n'
        assert stream.readline(4) == b'{"x"'
    assert store.local_path("datasets/a/1/train.jsonl").read_bytes() == b'{"x": 1}\n{"x": 2}\n'

    capped = store.writer("datasets/a/1/big.jsonl", max_bytes=4)
    with pytest.raises(PayloadTooLarge):
        capped.write(b"12345")
    dropped = store.writer("datasets/a/1/dropped.jsonl", max_bytes=10)
    dropped.write(b"abc")
    dropped.abort()
    store.writer("datasets/a/2/other.jsonl", max_bytes=10).commit()
    assert [(b.key, b.size) for b in store.list("datasets/a/1")] == [
        ("datasets/a/1/train.jsonl", 18)
    ]
    source = store.writer("datasets/a/2/staged.jsonl", max_bytes=10)
    source.write(b"moved")
    source.commit()
    store.move("datasets/a/2/staged.jsonl", "datasets/a/3/final.jsonl")
    assert store.size("datasets/a/2/staged.jsonl") is None
    assert store.local_path("datasets/a/3/final.jsonl").read_bytes() == b"moved"
    with pytest.raises(FileNotFoundError):
        store.move("datasets/a/2/staged.jsonl", "datasets/a/3/again.jsonl")
    assert store.delete_prefix("datasets/a/3") == 1
    assert store.delete("datasets/a/2/other.jsonl") is True
    assert store.delete("datasets/a/2/other.jsonl") is False
    assert store.delete_prefix("datasets/a") == 1
    assert store.list("datasets/a/1") == []
    with pytest.raises(FileNotFoundError):
        store.local_path("datasets/a/1/train.jsonl")
    with pytest.raises(FileNotFoundError):
        store.open("datasets/a/1/train.jsonl")


def test_large_blobs_go_up_in_parts_and_the_cache_follows_changes(
    s3_url: str, tmp_path: Path
) -> None:
    made = _bucket(s3_url, tmp_path, "parts")
    store = S3BlobStore(
        made.client, "parts", tmp_path / "c2", prefix="fb", part_bytes=MIN_PART_BYTES
    )
    chunk = bytes(range(256)) * 4096  # 1 MiB
    writer = store.writer("m/w.bin", max_bytes=10 * MIN_PART_BYTES)
    for _ in range(6):
        writer.write(chunk)  # 6 MiB: one 5 MiB part, then the rest on commit
    assert writer.commit() == 6 * len(chunk)
    head = store.client.head_object(Bucket="parts", Key="fb/m/w.bin")
    assert head["ContentLength"] == 6 * len(chunk) and "-2" in head["ETag"]  # two parts
    assert store.local_path("m/w.bin").stat().st_size == 6 * len(chunk)

    replaced = store.writer("m/w.bin", max_bytes=10)
    replaced.write(b"new")
    replaced.commit()
    assert store.local_path("m/w.bin").read_bytes() == b"new"  # the stale copy is refetched


def test_a_dataset_lives_in_the_bucket(s3_url: str, settings: Settings, tmp_path: Path) -> None:
    """The store, not the database, is under test: SQLite only."""
    configured = settings.model_copy(
        update={
            "blob_store": "s3",
            "s3_bucket": "datasets",
            "s3_endpoint_url": s3_url,
            "s3_region": "us-east-1",
            "s3_access_key_id": "testing",
            "s3_secret_access_key": SecretStr("testing"),
        }
    )
    database = Database(f"sqlite:///{tmp_path / 'fb.db'}")
    from firebox.store import migrate

    migrate.upgrade(database)
    services = build_services(configured, db=database, clock=FakeClock())
    initialize(services)
    blobs = services.storage.blobs
    assert isinstance(blobs, S3BlobStore)
    blobs.client.create_bucket(Bucket="datasets")
    line = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    with TestClient(create_app(services), raise_server_exceptions=False) as api:
        create_account(api, bearer(OPERATOR_KEY), "acme")
        api.headers["Authorization"] = "Bearer " + member_key(
            api, bearer(OPERATOR_KEY), "acme", "ann", "user"
        )
        root = "/v1/accounts/acme/datasets"
        assert api.post(root, json={"datasetId": "ds"}).status_code == 200
        sent = api.post(f"{root}/ds:upload", files={"file": ("t.jsonl", (line + "\n") * 3)})
        assert sent.status_code == 200, sent.text
        assert api.get(f"{root}/ds").json()["state"] == "READY"
        listed = blobs.client.list_objects_v2(Bucket="datasets")["Contents"]
        assert [o["Key"].rsplit("/", 1)[-1] for o in listed] == ["t.jsonl"]
        url = api.get(f"{root}/ds:getDownloadEndpoint").json()["filenameToSignedUrls"]["t.jsonl"]
        assert api.get(url).text == (line + "\n") * 3
        assert api.delete(f"{root}/ds").status_code == 200
        assert "Contents" not in blobs.client.list_objects_v2(Bucket="datasets")
    services.revocations.close()
    database.dispose()
