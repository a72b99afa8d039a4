"""``create|get|update user`` and ``list users``, inside ``--account``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from firebox.accounts.roles import Role
from firebox.cli.client import segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.errors import UsageError
from firebox.cli.output import Column
from firebox.cli.verbs import Verbs

COLUMNS = (
    Column("NAME", "name"),
    Column("ROLE", "role"),
    Column("DISPLAY NAME", "displayName"),
    Column("EMAIL", "email"),
    Column("SERVICE ACCOUNT", "serviceAccount"),
    Column("STATE", "state"),
)

DisplayNameOption = Annotated[str | None, typer.Option(help="Display name.", show_default=False)]
EmailOption = Annotated[str | None, typer.Option(help="Email address.", show_default=False)]


def users_path(account: str) -> str:
    return f"/v1/accounts/{segment(account)}/users"


def create_user(
    ctx: typer.Context,
    *,
    role: Annotated[Role, typer.Option(help="Role in the account.", case_sensitive=False)],
    user_id: Annotated[
        str | None,
        typer.Argument(
            metavar="ID", help="Id of the new user (default: from --email).", show_default=False
        ),
    ] = None,
    display_name: DisplayNameOption = None,
    email: EmailOption = None,
    service_account: Annotated[
        bool, typer.Option("--service-account", help="A machine user, not a person.")
    ] = False,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Add a user to the account."""
    call = Call.of(ctx, account=account, output=output)
    path = users_path(call.account())
    if user_id is None and email is None:
        raise UsageError("Give a user id or --email to name the user.")
    body: dict[str, Any] = {"role": role.value, "serviceAccount": service_account}
    if display_name is not None:
        body["displayName"] = display_name
    if email is not None:
        body["email"] = email
    with call.client() as api:
        created = api.post(path, body, params={"userId": user_id} if user_id else None)
    call.printer().resource(created)


def get_user(
    ctx: typer.Context,
    *,
    user_id: Annotated[str, typer.Argument(metavar="ID", help="User id.")],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show a user of the account."""
    call = Call.of(ctx, account=account, output=output)
    path = f"{users_path(call.account())}/{segment(user_id)}"
    with call.client() as api:
        found = api.get(path)
    call.printer().resource(found)


def update_user(
    ctx: typer.Context,
    *,
    user_id: Annotated[str, typer.Argument(metavar="ID", help="User id.")],
    role: Annotated[
        Role | None, typer.Option(help="New role.", case_sensitive=False, show_default=False)
    ] = None,
    display_name: DisplayNameOption = None,
    email: EmailOption = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Change a user's role, display name or email."""
    call = Call.of(ctx, account=account, output=output)
    path = f"{users_path(call.account())}/{segment(user_id)}"
    body: dict[str, Any] = {}
    if role is not None:
        body["role"] = role.value
    if display_name is not None:
        body["displayName"] = display_name
    if email is not None:
        body["email"] = email
    if not body:
        raise UsageError("Nothing to update: pass --role, --display-name or --email.")
    with call.client() as api:
        updated = api.patch(path, body)
    call.printer().resource(updated)


def list_users(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the users of the account."""
    call = Call.of(ctx, account=account, output=output)
    path = users_path(call.account())
    with call.client() as api:
        listing = api.list_all(path, "users")
    call.printer().listing(listing.items, COLUMNS, field="users", total_size=listing.total_size)


def register(verbs: Verbs) -> None:
    verbs.create.command("user")(create_user)
    verbs.get.command("user")(get_user)
    verbs.update.command("user")(update_user)
    verbs.list.command("users")(list_users)
