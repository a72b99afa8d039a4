"""``create|get|update account`` and ``list accounts``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from firebox.accounts.roles import Plan
from firebox.cli.client import segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.errors import UsageError
from firebox.cli.output import Column
from firebox.cli.verbs import Verbs

COLUMNS = (
    Column("NAME", "name"),
    Column("DISPLAY NAME", "displayName"),
    Column("PLAN", "plan"),
    Column("STATE", "state"),
    Column("SUSPEND STATE", "suspendState"),
    Column("CREATED", "createTime"),
)

DisplayNameOption = Annotated[str | None, typer.Option(help="Display name.", show_default=False)]
EmailOption = Annotated[str | None, typer.Option(help="Contact email.", show_default=False)]
AccountIdArgument = Annotated[
    str | None,
    typer.Argument(
        metavar="ID",
        help="Account id (default: --account / FIREBOX_ACCOUNT).",
        show_default=False,
    ),
]


def create_account(
    ctx: typer.Context,
    *,
    account_id: Annotated[str, typer.Argument(metavar="ID", help="Id of the new account.")],
    display_name: DisplayNameOption = None,
    email: EmailOption = None,
    plan: Annotated[Plan, typer.Option(help="Plan.", case_sensitive=False)] = Plan.DEVELOPER,
    output: OutputOption = None,
) -> None:
    """Create an account (operator key only)."""
    call = Call.of(ctx, output=output)
    body: dict[str, Any] = {"plan": plan.value}
    if display_name is not None:
        body["displayName"] = display_name
    if email is not None:
        body["email"] = email
    with call.client() as api:
        created = api.post("/v1/accounts", body, params={"accountId": account_id})
    call.printer().resource(created)


def get_account(
    ctx: typer.Context,
    *,
    account_id: AccountIdArgument = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show an account."""
    call = Call.of(ctx, account=account, output=output)
    target = call.account(account_id)
    with call.client() as api:
        found = api.get(f"/v1/accounts/{segment(target)}")
    call.printer().resource(found)


def update_account(
    ctx: typer.Context,
    *,
    account_id: AccountIdArgument = None,
    display_name: DisplayNameOption = None,
    email: EmailOption = None,
    plan: Annotated[
        Plan | None,
        typer.Option(help="New plan (operator only).", case_sensitive=False, show_default=False),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Change an account's display name, email or plan."""
    call = Call.of(ctx, account=account, output=output)
    target = call.account(account_id)
    body: dict[str, Any] = {}
    if display_name is not None:
        body["displayName"] = display_name
    if email is not None:
        body["email"] = email
    if plan is not None:
        body["plan"] = plan.value
    if not body:
        raise UsageError("Nothing to update: pass --display-name, --email or --plan.")
    with call.client() as api:
        updated = api.patch(f"/v1/accounts/{segment(target)}", body)
    call.printer().resource(updated)


def list_accounts(ctx: typer.Context, output: OutputOption = None) -> None:
    """List accounts: every account for the operator, one's own for anyone else."""
    call = Call.of(ctx, output=output)
    with call.client() as api:
        listing = api.list_all("/v1/accounts", "accounts")
    call.printer().listing(listing.items, COLUMNS, field="accounts", total_size=listing.total_size)


def register(verbs: Verbs) -> None:
    verbs.create.command("account")(create_account)
    verbs.get.command("account")(get_account)
    verbs.update.command("account")(update_account)
    verbs.list.command("accounts")(list_accounts)
