"""``create|delete api-key`` and ``list api-keys`` of one user of ``--account``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from firebox.cli.client import segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.output import Column
from firebox.cli.verbs import Verbs

COLUMNS = (
    Column("KEY ID", "keyId"),
    Column("DISPLAY NAME", "displayName"),
    Column("PREFIX", "prefix"),
    Column("CREATED", "createTime"),
    Column("EXPIRES", "expireTime"),
)

UserOption = Annotated[str, typer.Option("--user", help="Id of the user owning the keys.")]


def keys_path(account: str, user: str) -> str:
    return f"/v1/accounts/{segment(account)}/users/{segment(user)}/apiKeys"


def rfc3339(value: str | None) -> str | None:
    """Check ``--expire-time`` here, so a typo is a usage error before any request."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 time; use e.g. 2030-01-01T00:00:00Z."
        ) from None
    if parsed.tzinfo is None:
        raise typer.BadParameter("give a time zone, e.g. 2030-01-01T00:00:00Z.")
    return parsed.isoformat()


def create_api_key(
    ctx: typer.Context,
    *,
    user: UserOption,
    display_name: Annotated[
        str | None, typer.Option(help="Name shown in listings.", show_default=False)
    ] = None,
    expire_time: Annotated[
        str | None,
        typer.Option(
            help="RFC 3339 time after which the key stops working.",
            callback=rfc3339,
            show_default=False,
        ),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Issue an API key. Its secret is shown once: stdout carries only the secret
    (or, with -o json, the whole key including it)."""
    call = Call.of(ctx, account=account, output=output)
    path = keys_path(call.account(), user)
    spec: dict[str, Any] = {}
    if display_name is not None:
        spec["displayName"] = display_name
    if expire_time is not None:
        spec["expireTime"] = expire_time
    with call.client() as api:
        created = api.post(path, {"apiKey": spec})
    call.printer().secret(created, "key")


def list_api_keys(
    ctx: typer.Context,
    *,
    user: UserOption,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """List a user's active API keys (secrets are never shown again)."""
    call = Call.of(ctx, account=account, output=output)
    path = keys_path(call.account(), user)
    with call.client() as api:
        listing = api.list_all(path, "apiKeys")
    call.printer().listing(listing.items, COLUMNS, field="apiKeys", total_size=listing.total_size)


def delete_api_key(
    ctx: typer.Context,
    *,
    key_id: Annotated[
        str, typer.Argument(metavar="KEY_ID", help="Key id, as `list api-keys` shows it.")
    ],
    user: UserOption,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Revoke an API key; the next request made with it is refused."""
    call = Call.of(ctx, account=account, output=output)
    path = keys_path(call.account(), user) + ":delete"
    with call.client() as api:
        answer = api.post(path, {"keyId": key_id})
    call.printer().done(f"Deleted API key {key_id}.", answer)


def register(verbs: Verbs) -> None:
    verbs.create.command("api-key")(create_api_key)
    verbs.delete.command("api-key")(delete_api_key)
    verbs.list.command("api-keys")(list_api_keys)
