"""The datasets resource through its real routes (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from firebox.app import create_app
from firebox.clock import FakeClock
from firebox.server import initialize
from firebox.services import Services, build_services
from firebox.settings import Settings
from firebox.store.database import Database
from tests.conftest import OPERATOR_KEY
from tests.finetune.dataset_support import chat_line
from tests.support.api import bearer, create_account, member_key

ROOT = "/v1/accounts/acme/datasets"
GOOD = "\n".join(chat_line(f"question {n}?", f"answer {n}.") for n in range(3)) + "\n"


@pytest.fixture
def api(settings: Settings, database: Database, clock: FakeClock) -> Iterator[TestClient]:
    tight = settings.model_copy(
        update={"dataset_storage_quota_bytes": 4000, "dataset_direct_upload_bytes": 2000}
    )
    services: Services = build_services(tight, db=database, clock=clock)
    initialize(services)
    with TestClient(create_app(services), raise_server_exceptions=False) as client:
        create_account(client, bearer(OPERATOR_KEY), "acme")
        key = member_key(client, bearer(OPERATOR_KEY), "acme", "ann", "user")
        client.headers["Authorization"] = f"Bearer {key}"
        yield client
    services.revocations.close()


def _create(api: TestClient, dataset_id: str, **spec: object) -> dict[str, object]:
    made = api.post(ROOT, json={"datasetId": dataset_id, "dataset": {"userUploaded": {}, **spec}})
    assert made.status_code == 200, made.text
    body: dict[str, object] = made.json()
    return body


def _upload(
    api: TestClient, dataset_id: str, text: str | bytes, name: str = "train.jsonl"
) -> httpx.Response:
    content = text.encode() if isinstance(text, str) else text
    return api.post(f"{ROOT}/{dataset_id}:upload", files={"file": (name, content)})


def test_create_upload_get_list_update_delete(api: TestClient) -> None:
    made = _create(api, "ds1", exampleCount="3", displayName="Three")
    assert made["name"] == "accounts/acme/datasets/ds1"
    assert (made["state"], made["exampleCount"], made["userUploaded"]) == ("UPLOADING", "3", {})
    again = api.post(ROOT, json={"datasetId": "ds1"})
    assert again.status_code == 409 and again.headers["x-should-retry"] == "false"
    assert api.post(ROOT, json={"datasetId": "Bad_Id"}).status_code == 400

    uploaded = _upload(api, "ds1", GOOD)
    assert uploaded.status_code == 200, uploaded.text
    file = uploaded.json()
    assert (file["filename"], file["bytes"], file["object"]) == ("train.jsonl", len(GOOD), "file")
    assert {"id", "created_at", "purpose"} <= file.keys()

    shown = api.get(f"{ROOT}/ds1").json()
    assert (shown["state"], shown["format"], shown["exampleCount"]) == ("READY", "CHAT", "3")
    assert int(shown["estimatedTokenCount"]) > 0 and shown["status"]["code"] == "OK"
    assert shown["averageTurnCount"] == 2.0
    # READY files never change: jobs may be reading them.
    refused = _upload(api, "ds1", GOOD)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "dataset_ready"

    _create(api, "ds2")
    listed = api.get(ROOT, params={"pageSize": 1}).json()
    assert [d["name"] for d in listed["datasets"]] == ["accounts/acme/datasets/ds1"]
    rest = api.get(ROOT, params={"pageSize": 1, "pageToken": listed["nextPageToken"]}).json()
    assert [d["name"] for d in rest["datasets"]] == ["accounts/acme/datasets/ds2"]
    assert listed["totalSize"] == 2

    changed = api.patch(f"{ROOT}/ds1", json={"displayName": "Renamed"}).json()
    assert changed["displayName"] == "Renamed"
    assert api.patch(f"{ROOT}/ds1", json={"format": "COMPLETION"}).status_code == 400

    url = api.get(f"{ROOT}/ds1:getDownloadEndpoint").json()["filenameToSignedUrls"]
    downloaded = api.get(url["train.jsonl"], headers={"Authorization": ""})
    assert downloaded.status_code == 200 and downloaded.text == GOOD

    assert api.delete(f"{ROOT}/ds1").status_code == 200
    assert api.get(f"{ROOT}/ds1").status_code == 404
    assert api.get(url["train.jsonl"]).status_code == 404  # its files went with it


def test_a_file_with_errors_is_reported_line_by_line_and_stays_not_ready(api: TestClient) -> None:
    _create(api, "bad")
    lines = [
        chat_line("fine?", "yes"),  # 1
        "{not json",  # 2
        '{"prompt": "x"}',  # 3: no messages
        '{"messages": [{"role": "robot", "content": "hi"}]}',  # 4
        '{"messages": [{"role": "user", "content": "no answer"}]}',  # 5
    ]
    body = ("\n".join(lines) + "\n").encode() + b'{"messages": "\xff\xfe"}\n'  # 6: not UTF-8
    refused = _upload(api, "bad", body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "dataset_invalid"
    for line in ("train.jsonl:2:", "train.jsonl:3:", "train.jsonl:4:", "train.jsonl:5:", ":6:"):
        assert line in error["message"]

    shown = api.get(f"{ROOT}/bad").json()
    assert shown["state"] == "UPLOADING"
    assert shown["status"]["code"] == "INVALID_ARGUMENT"
    problems = {p["line"]: p["message"] for p in shown["validationProblems"]}
    assert sorted(problems) == [2, 3, 4, 5, 6]
    assert "invalid JSON" in problems[2]
    assert "missing 'messages'" in problems[3]
    assert "'robot'" in problems[4]
    assert "no assistant turn" in problems[5]
    assert "UTF-8" in problems[6]

    # A fixed file replaces the bad one and the dataset becomes READY.
    fixed = _upload(api, "bad", GOOD, name="fixed.jsonl")
    assert fixed.status_code == 200, fixed.text
    shown = api.get(f"{ROOT}/bad").json()
    assert shown["state"] == "READY" and shown["validationProblems"] == []
    assert list(api.get(f"{ROOT}/bad:getDownloadEndpoint").json()["filenameToSignedUrls"]) == [
        "fixed.jsonl"
    ]


def test_signed_upload_urls_then_validate(api: TestClient) -> None:
    _create(api, "shards")
    part1, part2 = GOOD, chat_line("one more?", "yes.") + "\n"
    urls = api.post(
        f"{ROOT}/shards:getUploadEndpoint",
        json={"filenameToSize": {"a.jsonl": str(len(part1)), "b.jsonl": str(len(part2))}},
    )
    assert urls.status_code == 200, urls.text
    signed = urls.json()["filenameToSignedUrls"]
    # Only the first file arrived: validation says which one is missing.
    assert api.put(signed["a.jsonl"], content=part1, headers={"Authorization": ""}).is_success
    missing = api.post(f"{ROOT}/shards:validateUpload", json={})
    assert missing.status_code == 400 and "b.jsonl" in missing.json()["error"]["message"]
    assert api.put(signed["b.jsonl"], content=part2, headers={"Authorization": ""}).is_success
    valid = api.post(f"{ROOT}/shards:validateUpload", json={})
    assert valid.status_code == 200, valid.text
    assert (valid.json()["state"], valid.json()["exampleCount"]) == ("READY", "4")
    # A signed URL used again after validation cannot change the READY files.
    again = part1.replace("question", "QUESTION")
    assert api.put(signed["a.jsonl"], content=again, headers={"Authorization": ""}).is_success
    urls = api.get(f"{ROOT}/shards:getDownloadEndpoint").json()["filenameToSignedUrls"]
    assert api.get(urls["a.jsonl"]).text == part1
    assert api.post(f"{ROOT}/shards:validateUpload", json={}).json()["state"] == "READY"
    assert api.get(urls["a.jsonl"]).text == part1
    bad_name = api.post(
        f"{ROOT}/shards:getUploadEndpoint", json={"filenameToSize": {"../x.jsonl": "3"}}
    )
    assert bad_name.status_code == 400


def test_size_cap_and_account_quota(api: TestClient) -> None:
    """Direct uploads stop at 2,000 bytes; the account holds at most 4,000 (the fixture)."""
    _create(api, "big")
    too_big = _upload(api, "big", "x" * 2500)
    assert too_big.status_code == 413, too_big.text
    assert api.get(f"{ROOT}/big").json()["totalBytes"] == "0"

    _create(api, "q1")
    urls = api.post(f"{ROOT}/q1:getUploadEndpoint", json={"filenameToSize": {"a.jsonl": "3500"}})
    assert urls.status_code == 200  # 3,500 bytes reserved until validation
    over = _upload(api, "big", GOOD)
    assert over.status_code == 400
    assert over.json()["error"]["code"] == "storage_quota_exceeded"
    assert api.delete(f"{ROOT}/q1").status_code == 200  # gives the reservation back
    assert _upload(api, "big", GOOD).status_code == 200


def test_other_accounts_and_read_only_roles(api: TestClient) -> None:
    _create(api, "mine")
    create_account(api, bearer(OPERATOR_KEY), "other")
    stranger = member_key(api, bearer(OPERATOR_KEY), "other", "olga", "user")
    seen = api.get(f"{ROOT}/mine", headers=bearer(stranger))
    assert seen.status_code == 404
    sneaky = api.post(
        f"{ROOT}/mine:upload", files={"file": ("t.jsonl", GOOD)}, headers=bearer(stranger)
    )
    assert sneaky.status_code == 404
    no_file = api.post(f"{ROOT}/mine:upload", files={"other": ("t.jsonl", GOOD)})
    assert no_file.status_code == 400 and no_file.json()["error"]["code"] == "invalid_upload"
    not_multipart = api.post(f"{ROOT}/mine:upload", content=GOOD)
    assert not_multipart.status_code == 400
