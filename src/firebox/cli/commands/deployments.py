"""Deployments on the command line, as firectl spells them.

    firebox create deployment accounts/firebox/models/firebox-tiny --min-replicas 0 \\
        --max-replicas 2 --scale-to-zero-window 10m
    firebox list deployments
    firebox get deployment ID
    firebox update deployment ID --max-replicas 3
    firebox scale deployment ID 2
    firebox delete deployment ID
    firebox list deployment-shapes

``create deployment`` shows a progress line (state, replicas) until the
deployment is READY, and fails if it becomes FAILED or the wait runs out;
``--no-wait`` returns at once with the CREATING resource.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console

from firebox.cli.client import segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.errors import CliError
from firebox.cli.output import Column
from firebox.cli.verbs import Verbs

PLATFORM = "firebox"
COLUMNS = (
    Column("NAME", "name"),
    Column("BASE MODEL", "baseModel"),
    Column("ACCELERATOR", "accelerator"),
    Column("REPLICAS", "replicas"),
    Column("STATE", "state"),
)
SHAPE_COLUMNS = (
    Column("NAME", "name"),
    Column("BASE MODEL", "baseModel"),
    Column("ACCELERATOR", "accelerator"),
    Column("PRECISION", "precision"),
    Column("ADDONS", "enableAddons"),
)

AcceleratorType = Annotated[
    str | None,
    typer.Option(help="NVIDIA_A100_80GB (default), NVIDIA_H100_80GB (Enterprise), ..."),
]
AcceleratorCount = Annotated[
    int | None, typer.Option(min=1, help="Accelerators per replica (default 1).")
]
MinReplicas = Annotated[int | None, typer.Option(min=0, help="Fewest replicas (default 0).")]
MaxReplicas = Annotated[
    int | None, typer.Option(min=0, help="Most replicas (default max(min, 1)).")
]
Window = Annotated[str | None, typer.Option(help='A duration: "30s", "10m", "1h".')]
DisplayName = Annotated[str | None, typer.Option(help="A name for people.")]
Shape = Annotated[str | None, typer.Option(help="A deployment shape (its fields are defaults).")]
Addons = Annotated[
    bool | None, typer.Option("--enable-addons/--no-addons", help="Allow LoRA add-ons on it.")
]
DeploymentId = Annotated[str, typer.Argument(metavar="ID", help="Deployment id or full name.")]


def _path(account: str, deployment: str | None = None) -> str:
    base = f"/v1/accounts/{segment(account)}/deployments"
    return base if deployment is None else f"{base}/{segment(deployment)}"


def _body(**fields: Any) -> dict[str, Any]:
    """The wire body of the options given (None: not sent)."""
    wire = {
        "accelerator_type": "acceleratorType",
        "accelerator_count": "acceleratorCount",
        "min_replicas": "minReplicaCount",
        "max_replicas": "maxReplicaCount",
        "display_name": "displayName",
        "shape": "deploymentShape",
        "enable_addons": "enableAddons",
    }
    body = {wire[k]: v for k, v in fields.items() if k in wire and v is not None}
    policy = {
        key: fields[name]
        for name, key in (
            ("scale_up_window", "scaleUpWindow"),
            ("scale_down_window", "scaleDownWindow"),
            ("scale_to_zero_window", "scaleToZeroWindow"),
        )
        if fields.get(name) is not None
    }
    if policy:
        body["autoscalingPolicy"] = policy
    return body


def _row(item: dict[str, Any]) -> dict[str, Any]:
    count = item.get("acceleratorCount")
    return {
        **item,
        "accelerator": f"{count} x {item.get('acceleratorType')}",
        "replicas": f"{item.get('replicaCount', 0)}/{item.get('desiredReplicaCount', 0)}",
    }


def wait_until_ready(
    fetch: Callable[[], dict[str, Any]],
    show: Callable[[dict[str, Any]], None],
    *,
    timeout_s: float,
    interval_s: float = 1.0,
    now: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until READY; a FAILED deployment or a timeout is a ``CliError`` saying which."""
    deadline = now() + timeout_s
    while True:
        current = fetch()
        show(current)
        state = current.get("state")
        if state == "READY":
            return current
        if state in ("FAILED", "DELETING", "DELETED"):
            status = current.get("status") or {}
            raise CliError(
                f"Deployment {current.get('name')} is {state}: "
                f"{status.get('message') or status.get('code') or 'no reason given'}."
            )
        if now() >= deadline:
            raise CliError(
                f"Deployment {current.get('name')} is still {state} after {timeout_s:g}s; "
                "it keeps starting: follow it with `firebox get deployment`."
            )
        sleep(interval_s)


def _progress_line(item: dict[str, Any]) -> str:
    stats = item.get("replicaStats") or {}
    return (
        f"{item.get('name')}: {item.get('state')} - {stats.get('readyReplicaCount', 0)} ready, "
        f"{stats.get('initializingReplicaCount', 0)} starting, "
        f"{item.get('desiredReplicaCount', 0)} wanted"
    )


def create_deployment(
    ctx: typer.Context,
    *,
    model: Annotated[str, typer.Argument(metavar="MODEL", help="The model to deploy.")],
    deployment_id: Annotated[
        str | None, typer.Option("--id", help="Deployment id (default: generated).")
    ] = None,
    accelerator_type: AcceleratorType = None,
    accelerator_count: AcceleratorCount = None,
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    scale_up_window: Window = None,
    scale_down_window: Window = None,
    scale_to_zero_window: Window = None,
    display_name: DisplayName = None,
    shape: Shape = None,
    enable_addons: Addons = None,
    validate_only: Annotated[
        bool, typer.Option("--validate-only", help="Check everything; create nothing.")
    ] = False,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Return at once instead of waiting for READY.")
    ] = False,
    wait_timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for READY.")] = 900.0,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Create a deployment of MODEL, then show its progress until it is READY."""
    call = Call.of(ctx, account=account, output=output)
    target = call.account()
    body = {"baseModel": model, **_body(**locals())}
    params: dict[str, str | int] = {}
    if deployment_id:
        params["deploymentId"] = deployment_id
    if validate_only:
        params["validateOnly"] = "true"
    printer = call.printer()
    with call.client() as api:
        made = api.post(_path(target), body, params=params)
        if no_wait or validate_only:
            printer.resource(made)
            return
        name = str(made["name"]).rsplit("/", 1)[-1]
        console = Console(stderr=True)
        with console.status(_progress_line(made)) as status:
            ready = wait_until_ready(
                lambda: api.get(_path(target, name)),
                lambda item: status.update(_progress_line(item)),
                timeout_s=wait_timeout,
            )
    printer.resource(ready)


def list_deployments(
    ctx: typer.Context,
    show_deleted: Annotated[bool, typer.Option(help="Include deleted deployments.")] = False,
    filter_: Annotated[
        str | None, typer.Option("--filter", help='AIP-160, e.g. state="READY".')
    ] = None,
    order_by: Annotated[str | None, typer.Option(help='e.g. "create_time desc".')] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """List the account's deployments."""
    call = Call.of(ctx, account=account, output=output)
    params: dict[str, str | int] = {"pageSize": 200}
    if show_deleted:
        params["showDeleted"] = "true"
    if filter_:
        params["filter"] = filter_
    if order_by:
        params["orderBy"] = order_by
    items: list[dict[str, Any]] = []
    with call.client() as api:
        while True:  # every page, with the same query each time
            page = api.get(_path(call.account()), params)
            items += page.get("deployments") or []
            token = str(page.get("nextPageToken") or "")
            if not token or token == params.get("pageToken"):
                break
            params["pageToken"] = token
    rows = items if call.printer().is_json else [_row(item) for item in items]
    call.printer().listing(rows, COLUMNS, field="deployments")


def get_deployment(
    ctx: typer.Context,
    deployment: DeploymentId,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show one deployment."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        call.printer().resource(api.get(_path(call.account(), deployment)))


def update_deployment(
    ctx: typer.Context,
    *,
    deployment: DeploymentId,
    accelerator_type: AcceleratorType = None,
    accelerator_count: AcceleratorCount = None,
    min_replicas: MinReplicas = None,
    max_replicas: MaxReplicas = None,
    scale_up_window: Window = None,
    scale_down_window: Window = None,
    scale_to_zero_window: Window = None,
    display_name: DisplayName = None,
    shape: Shape = None,
    enable_addons: Addons = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Change the fields given; the others stay."""
    call = Call.of(ctx, account=account, output=output)
    body = _body(**locals())
    if not body:
        raise typer.BadParameter("Give at least one field to change.")
    with call.client() as api:
        call.printer().resource(api.patch(_path(call.account(), deployment), body))


def scale_deployment(
    ctx: typer.Context,
    deployment: DeploymentId,
    replicas: Annotated[int, typer.Argument(metavar="N", min=0, help="Replica count.")],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Hold N replicas (overrides autoscaling until the next policy change)."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        path = _path(call.account(), deployment) + ":scale"
        call.printer().resource(api.patch(path, {"replicaCount": replicas}))


def delete_deployment(
    ctx: typer.Context,
    deployment: DeploymentId,
    hard: Annotated[bool, typer.Option(help="Remove at once (no undelete).")] = False,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a deployment (it can be undeleted until its purge time, unless --hard)."""
    call = Call.of(ctx, account=account, output=output)
    target = call.account()
    with call.client() as api:
        path = _path(target, deployment) + ("?hard=true" if hard else "")
        api.request("DELETE", path)
    call.printer().done(f"Deleted deployment {deployment}.", {"deleted": deployment})


def list_deployment_shapes(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the platform's public deployment shapes, and the account's own if one is given."""
    call = Call.of(ctx, account=account, output=output)
    owners = [PLATFORM]
    own = account or call.options.account
    if own and own != PLATFORM:
        owners.append(own)
    items: list[dict[str, Any]] = []
    with call.client() as api:
        for owner in owners:
            items += api.list_all(
                f"/v1/accounts/{segment(owner)}/deploymentShapes", "deploymentShapes"
            ).items
    rows = items if call.printer().is_json else [_row(item) for item in items]
    call.printer().listing(rows, SHAPE_COLUMNS, field="deploymentShapes")


def register(verbs: Verbs) -> None:
    verbs.create.command("deployment")(create_deployment)
    verbs.list.command("deployments")(list_deployments)
    verbs.get.command("deployment")(get_deployment)
    verbs.update.command("deployment")(update_deployment)
    verbs.scale.command("deployment")(scale_deployment)
    verbs.delete.command("deployment")(delete_deployment)
    verbs.list.command("deployment-shapes")(list_deployment_shapes)
