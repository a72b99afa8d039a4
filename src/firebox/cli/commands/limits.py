"""``list quotas`` and ``update quota``: an account's quotas, as firectl shows them."""

from __future__ import annotations

from typing import Annotated

import typer

from firebox.cli.client import segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.output import Column
from firebox.cli.verbs import Verbs

COLUMNS = (
    Column("NAME", "name"),
    Column("VALUE", "value"),
    Column("USAGE", "usage"),
    Column("CAN RAISE", "canRaise"),
)


def list_quotas(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the account's quotas: value (empty: unlimited), usage, and whether it can be raised."""
    call = Call.of(ctx, account=account, output=output)
    target = call.account()
    with call.client() as api:
        listing = api.list_all(f"/v1/accounts/{segment(target)}/quotas", "quotas")
    call.printer().listing(listing.items, COLUMNS, field="quotas", total_size=listing.total_size)


def update_quota(
    ctx: typer.Context,
    *,
    quota_id: Annotated[
        str,
        typer.Argument(
            metavar="ID",
            help="Quota id: deployed-models, a100-gpus, h100-gpus, serverless-requests-per-minute.",
        ),
    ],
    value: Annotated[int, typer.Option("--value", min=0, help="The new value.")],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Set a quota's value (operator key only)."""
    call = Call.of(ctx, account=account, output=output)
    target = call.account()
    with call.client() as api:
        updated = api.patch(
            f"/v1/accounts/{segment(target)}/quotas/{segment(quota_id)}", {"value": value}
        )
    call.printer().resource(updated)


def register(verbs: Verbs) -> None:
    verbs.list.command("quotas")(list_quotas)
    verbs.update.command("quota")(update_quota)
