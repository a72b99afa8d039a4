"""``create|get|delete sftj``, ``list sftj``, ``cancel sftj`` and ``resume sftj``.

Supervised fine-tuning jobs (firectl calls them ``sftj``), inside ``--account``.
``get sftj`` shows the job with its progress: epoch, step, loss, tokens
trained and the ETA.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from firebox.cli.client import segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.output import Column, OutputFormat
from firebox.cli.verbs import Verbs

COLUMNS = (
    Column("NAME", "name"),
    Column("STATE", "state"),
    Column("BASE MODEL", "baseModel"),
    Column("OUTPUT MODEL", "outputModel"),
    Column("EPOCHS", "epochs"),
    Column("PROGRESS %", "jobProgress.percent"),
    Column("CREATED", "createTime"),
)

JobArg = Annotated[str, typer.Argument(metavar="ID", help="Fine-tuning job id.")]


def jobs_path(account: str) -> str:
    return f"/v1/accounts/{segment(account)}/supervisedFineTuningJobs"


def _full(account: str, name: str, kind: str) -> str:
    return name if name.startswith("accounts/") else f"accounts/{account}/{kind}/{name}"


def create_sftj(
    ctx: typer.Context,
    *,
    job_id: Annotated[
        str | None, typer.Argument(metavar="[ID]", help="Job id (default: generated).")
    ] = None,
    dataset: Annotated[str, typer.Option(help="Training dataset (id or full name).")],
    base_model: Annotated[
        str | None, typer.Option(help="Base model to train (full name).", show_default=False)
    ] = None,
    warm_start_from: Annotated[
        str | None,
        typer.Option(help="A LoRA add-on to continue training instead.", show_default=False),
    ] = None,
    output_model: Annotated[
        str | None, typer.Option(help="Id of the add-on to create (default: the job id).")
    ] = None,
    evaluation_dataset: Annotated[str | None, typer.Option(show_default=False)] = None,
    epochs: Annotated[int | None, typer.Option(show_default=False)] = None,
    learning_rate: Annotated[float | None, typer.Option(show_default=False)] = None,
    lora_rank: Annotated[int | None, typer.Option(show_default=False)] = None,
    max_context_length: Annotated[int | None, typer.Option(show_default=False)] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Tokens per batch.", show_default=False)
    ] = None,
    batch_size_samples: Annotated[int | None, typer.Option(show_default=False)] = None,
    display_name: Annotated[str | None, typer.Option(show_default=False)] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Create a supervised fine-tuning job (LoRA) on a dataset."""
    call = Call.of(ctx, account=account, output=output)
    acct = call.account()
    body: dict[str, Any] = {"dataset": _full(acct, dataset, "datasets")}
    optional = {
        "baseModel": base_model,
        "warmStartFrom": warm_start_from,
        "outputModel": output_model,
        "evaluationDataset": _full(acct, evaluation_dataset, "datasets")
        if evaluation_dataset
        else None,
        "epochs": epochs,
        "learningRate": learning_rate,
        "loraRank": lora_rank,
        "maxContextLength": max_context_length,
        "batchSize": batch_size,
        "batchSizeSamples": batch_size_samples,
        "displayName": display_name,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    path = jobs_path(acct)
    if job_id:
        path += f"?supervisedFineTuningJobId={segment(job_id)}"
    with call.client() as api:
        created = api.post(path, body)
    call.printer().resource(created)


def get_sftj(
    ctx: typer.Context,
    *,
    job_id: JobArg,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show a job and its progress (epoch, step, loss, tokens trained, ETA)."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        found = api.get(f"{jobs_path(call.account())}/{segment(job_id)}")
    call.printer().resource(found)


def list_sftj(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the account's supervised fine-tuning jobs."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        listing = api.list_all(jobs_path(call.account()), "supervisedFineTuningJobs")
    call.printer().listing(
        listing.items, COLUMNS, field="supervisedFineTuningJobs", total_size=listing.total_size
    )


def _verb(
    ctx: typer.Context, job_id: str, verb: str, account: str | None, output: OutputFormat | None
) -> None:
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        answer = api.post(f"{jobs_path(call.account())}/{segment(job_id)}:{verb}", {})
    call.printer().resource(answer)


def cancel_sftj(
    ctx: typer.Context,
    *,
    job_id: JobArg,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Cancel a job: it pays for what it trained; its checkpoint stays for resume."""
    _verb(ctx, job_id, "cancel", account, output)


def resume_sftj(
    ctx: typer.Context,
    *,
    job_id: JobArg,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Resume a paused, cancelled or failed job from its last checkpoint."""
    _verb(ctx, job_id, "resume", account, output)


def delete_sftj(
    ctx: typer.Context,
    *,
    job_id: JobArg,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a job that is not running (its output model stays)."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        api.request("DELETE", f"{jobs_path(call.account())}/{segment(job_id)}")
    call.printer().done(f"Deleted fine-tuning job {job_id}.", {"deleted": job_id})


def register(verbs: Verbs) -> None:
    verbs.create.command("sftj")(create_sftj)
    verbs.get.command("sftj")(get_sftj)
    verbs.list.command("sftj")(list_sftj)
    verbs.delete.command("sftj")(delete_sftj)


def register_root(root: typer.Typer) -> None:
    """The verbs only jobs have: ``cancel`` and ``resume``."""
    cancel = typer.Typer(help="Cancel a job.", no_args_is_help=True)
    cancel.command("sftj")(cancel_sftj)
    root.add_typer(cancel, name="cancel")
    resume = typer.Typer(help="Resume a job from its last checkpoint.", no_args_is_help=True)
    resume.command("sftj")(resume_sftj)
    root.add_typer(resume, name="resume")
