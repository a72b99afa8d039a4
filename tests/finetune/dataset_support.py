"""Helpers of the dataset tests."""

from __future__ import annotations

import json

from firebox.accounts.principal import Principal
from firebox.accounts.roles import Role
from firebox.finetune.dataset_models import storage_prefix
from firebox.finetune.dataset_repository import get
from firebox.services import Services


def chat_line(question: str, answer: str) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
        }
    )


def operator_principal() -> Principal:
    return Principal(
        account_id="firebox",
        user_id="operator",
        user_pk=0,
        role=Role.ADMIN,
        key_id="k",
        key_hash="h",
        is_operator=True,
    )


def put_file(services: Services, account: str, dataset: str, name: str, text: str) -> None:
    """Store a file of a dataset as an upload would have."""
    with services.db.transaction() as session:
        row = get(session, account, dataset)
        assert row is not None
        prefix = storage_prefix(row)
    writer = services.storage.blobs.writer(f"{prefix}/{name}", max_bytes=10**9)
    writer.write(text.encode())
    writer.commit()
