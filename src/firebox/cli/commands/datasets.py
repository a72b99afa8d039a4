"""``create|get|delete dataset`` and ``list datasets``, inside ``--account``.

``firebox create dataset ID FILE`` creates the dataset (or reuses one that
still awaits its files, after a failed validation), uploads the file with
a progress bar (multipart ``:upload`` up to the direct-upload size, else a
signed URL from ``:getUploadEndpoint`` then ``:validateUpload``) and prints
the validation result: the counts of a READY dataset, or every problem with
its line number (exit code 1).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from firebox.cli.client import ApiClient, error_from_response, segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.errors import ApiError, CliError, UsageError
from firebox.cli.output import Column, Printer, table_of
from firebox.cli.verbs import Verbs

DIRECT_UPLOAD_BYTES = 150 * 1024 * 1024  # the largest file :upload takes (the SDK's limit)
CHUNK = 1024 * 1024
UPLOAD_TIMEOUT_S = 3600.0

COLUMNS = (
    Column("NAME", "name"),
    Column("STATE", "state"),
    Column("FORMAT", "format"),
    Column("EXAMPLES", "exampleCount"),
    Column("TOKENS", "estimatedTokenCount"),
    Column("BYTES", "totalBytes"),
    Column("CREATED", "createTime"),
)


def datasets_path(account: str) -> str:
    return f"/v1/accounts/{segment(account)}/datasets"


def _chunks(file: BinaryIO, advance: Callable[[int], None]) -> Iterator[bytes]:
    while chunk := file.read(CHUNK):
        advance(len(chunk))
        yield chunk


def _multipart(
    filename: str, file: BinaryIO, size: int, advance: Callable[[int], None]
) -> tuple[Iterator[bytes], dict[str, str]]:
    """A streamed multipart/form-data body with one part ``file``, and its headers."""
    boundary = uuid.uuid4().hex
    quoted = filename.replace("\\", "_").replace('"', "_")
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{quoted}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        yield from _chunks(file, advance)
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={boundary}",
        "Content-Length": str(len(head) + size + len(tail)),
    }
    return body(), headers


def _progress(stderr: Console) -> Progress:
    return Progress(
        TextColumn("uploading {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=stderr,
    )


def _upload(api: ApiClient, path: str, file_path: Path, *, signed: bool, printer: Printer) -> None:
    size = file_path.stat().st_size
    name = file_path.name
    with _progress(printer.stderr) as progress, file_path.open("rb") as file:
        task = progress.add_task(name, total=size)

        def advance(n: int) -> None:
            progress.update(task, advance=n)

        if not signed:
            content, headers = _multipart(name, file, size, advance)
            api.request(
                "POST", f"{path}:upload", content=content, headers=headers, timeout=UPLOAD_TIMEOUT_S
            )
            return
        urls = api.post(f"{path}:getUploadEndpoint", {"filenameToSize": {name: str(size)}})
        url = str((urls.get("filenameToSignedUrls") or {}).get(name) or "")
        if not url:
            raise CliError("The server returned no upload URL for the file.")
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        try:
            # A plain client: the signed URL is the authority, no API key goes with it.
            sent = httpx.put(
                url, content=_chunks(file, advance), headers=headers, timeout=UPLOAD_TIMEOUT_S
            )
        except httpx.TransportError as exc:
            raise CliError(f"The upload to {url.split('?', maxsplit=1)[0]} failed: {exc}") from None
        if sent.is_error:
            raise error_from_response(sent)
    api.post(f"{path}:validateUpload", {})


def _show_problems(printer: Printer, dataset: dict[str, Any]) -> None:
    problems = dataset.get("validationProblems") or []
    rows = [
        [str(p.get("file", "")), str(p.get("line", "")), str(p.get("message", ""))]
        for p in problems
    ]
    printer.stderr.print(table_of(["FILE", "LINE", "PROBLEM"], rows, printer.stderr.width))


def create_dataset(
    ctx: typer.Context,
    *,
    dataset_id: Annotated[str, typer.Argument(metavar="ID", help="Id of the new dataset.")],
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="JSONL file, one example per line.", exists=True, dir_okay=False
        ),
    ],
    display_name: Annotated[
        str | None, typer.Option(help="Display name.", show_default=False)
    ] = None,
    format_: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="CHAT or COMPLETION (default: found from the file).",
            show_default=False,
        ),
    ] = None,
    signed_url: Annotated[
        bool,
        typer.Option("--signed-url", help="Upload through a signed URL even for a small file."),
    ] = False,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Create a dataset from a file: upload it (with progress), then show the validation."""
    call = Call.of(ctx, account=account, output=output)
    path = datasets_path(call.account())
    spec: dict[str, Any] = {"userUploaded": {}}
    if display_name is not None:
        spec["displayName"] = display_name
    if format_ is not None:
        if format_.upper() not in ("CHAT", "COMPLETION"):
            raise UsageError("--format is CHAT or COMPLETION.")
        spec["format"] = format_.upper()
    printer = call.printer()
    with call.client() as api:
        one = f"{path}/{segment(dataset_id)}"
        try:
            api.post(path, {"datasetId": dataset_id, "dataset": spec})
        except ApiError as exc:
            # Uploading again after fixing the file: the dataset awaits its files.
            if exc.code != "dataset_exists" or api.get(one).get("state") != "UPLOADING":
                raise
            printer.note(f"Dataset {dataset_id} exists and awaits its files: uploading to it.")
        big = os.path.getsize(file) > DIRECT_UPLOAD_BYTES
        try:
            _upload(api, one, file, signed=signed_url or big, printer=printer)
        except ApiError as exc:
            if exc.code != "dataset_invalid":
                raise
            _show_problems(printer, api.get(one))
            raise
        printer.resource(api.get(one))


def get_dataset(
    ctx: typer.Context,
    *,
    dataset_id: Annotated[str, typer.Argument(metavar="ID", help="Dataset id.")],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show a dataset, with its validation problems if it has any."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        found = api.get(f"{datasets_path(call.account())}/{segment(dataset_id)}")
    printer = call.printer()
    printer.resource(found)
    if found.get("validationProblems") and not printer.is_json:
        _show_problems(printer, found)


def list_datasets(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the datasets of the account."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        listing = api.list_all(datasets_path(call.account()), "datasets")
    call.printer().listing(listing.items, COLUMNS, field="datasets", total_size=listing.total_size)


def delete_dataset(
    ctx: typer.Context,
    *,
    dataset_id: Annotated[str, typer.Argument(metavar="ID", help="Dataset id.")],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a dataset and its files."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        api.request("DELETE", f"{datasets_path(call.account())}/{segment(dataset_id)}")
    call.printer().done(f"Deleted dataset {dataset_id}.", {"deleted": dataset_id})


def register(verbs: Verbs) -> None:
    verbs.create.command("dataset")(create_dataset)
    verbs.get.command("dataset")(get_dataset)
    verbs.list.command("datasets")(list_datasets)
    verbs.delete.command("dataset")(delete_dataset)
