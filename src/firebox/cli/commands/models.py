"""Models on the command line: ``list|get|create|update|delete model(s)``, deployed models.

    firebox list models --account firebox
    firebox create model my-lora ./adapter --base-model accounts/firebox/models/firebox-tiny
    firebox create model my-base ./hf-folder            (Enterprise accounts)
    firebox list deployed-models
    firebox load-lora accounts/acme/models/my-lora [--deployment ID]
    firebox unload-lora my-lora

``create model`` uploads a local PEFT adapter folder (``adapter_config.json``
present: a LoRA add-on, its rank and target modules read from that file) or a
Hugging Face model folder (a base model) through the same calls the
``fireworks-ai`` SDK makes: create, ``:getUploadEndpoint``, one PUT per file
to its signed URL (with a progress bar), ``:validateUpload``. Problems are
printed one per file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from firebox.cli.client import ApiClient, segment
from firebox.cli.context import AccountOption, Call, OutputOption
from firebox.cli.errors import ApiError, CliError, UsageError
from firebox.cli.output import Column
from firebox.cli.verbs import Verbs

COLUMNS = (
    Column("NAME", "name"),
    Column("KIND", "kind"),
    Column("STATE", "state"),
    Column("BASE MODEL", "baseModel"),
    Column("PRICE CLASS", "priceClass"),
    Column("CREATE TIME", "createTime"),
)
DEPLOYED_COLUMNS = (
    Column("NAME", "name"),
    Column("MODEL", "model"),
    Column("STATE", "state"),
    Column("CREATE TIME", "createTime"),
)
_CHUNK = 1024 * 1024

ModelArgument = Annotated[
    str, typer.Argument(metavar="MODEL", help="Model id in the account, or its full name.")
]


def _model_path(call: Call, model: str) -> str:
    """``/v1/accounts/{a}/models/{m}`` for an id (in --account) or ``accounts/a/models/m``."""
    parts = model.split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "models":
        account, model_id = parts[1], parts[3]
    elif "/" in model:
        raise UsageError(f"{model!r} is neither a model id nor accounts/<a>/models/<id>.")
    else:
        account, model_id = call.account(), model
    return f"/v1/accounts/{segment(account)}/models/{segment(model_id)}"


def _row(model: dict[str, Any]) -> dict[str, Any]:
    peft = model.get("peftDetails") or {}
    return {**model, "baseModel": peft.get("baseModel")}


def list_models(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the account's models (``--account firebox``: the shared ones)."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        listing = api.list_all(f"/v1/accounts/{segment(call.account())}/models", "models")
    items = listing.items if call.printer().is_json else [_row(m) for m in listing.items]
    call.printer().listing(items, COLUMNS, field="models", total_size=listing.total_size)


def get_model(
    ctx: typer.Context,
    *,
    model: ModelArgument,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Show one model."""
    call = Call.of(ctx, account=account, output=output)
    with call.client() as api:
        call.printer().resource(api.get(_model_path(call, model)))


def update_model(
    ctx: typer.Context,
    *,
    model: ModelArgument,
    display_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Change a model's display name or description."""
    call = Call.of(ctx, account=account, output=output)
    body: dict[str, Any] = {}
    if display_name is not None:
        body["displayName"] = display_name
    if description is not None:
        body["description"] = description
    if not body:
        raise UsageError("Nothing to update: pass --display-name or --description.")
    with call.client() as api:
        call.printer().resource(api.patch(_model_path(call, model), body))


def delete_model(
    ctx: typer.Context,
    *,
    model: ModelArgument,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Delete a model (refused while add-ons or deployed models use it)."""
    call = Call.of(ctx, account=account, output=output)
    path = _model_path(call, model)
    with call.client() as api:
        api.request("DELETE", path)
    call.printer().done(f"Deleted {path.removeprefix('/v1/')}.", {})


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder: give the adapter's or the model's folder.")
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    if not files:
        raise UsageError(f"{folder} holds no files.")
    return files


def _model_body(
    folder: Path, base_model: str | None, display_name: str | None, description: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    config = folder / "adapter_config.json"
    if config.is_file():
        if not base_model:
            raise UsageError(
                f"{folder} is a LoRA adapter: pass --base-model accounts/<a>/models/<base>."
            )
        try:
            raw = json.loads(config.read_text())
            targets = raw.get("target_modules") or []
            rank = int(raw["r"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{config} cannot be read: {exc}") from None
        if isinstance(targets, str):
            targets = [targets]
        body = {
            "kind": "HF_PEFT_ADDON",
            "peftDetails": {"baseModel": base_model, "r": rank, "targetModules": list(targets)},
        }
    elif (folder / "config.json").is_file():
        if base_model:
            raise UsageError("--base-model is for LoRA adapters; this folder is a base model.")
        body = {"kind": "HF_BASE_MODEL"}
    else:
        raise UsageError(
            f"{folder} holds neither adapter_config.json (a LoRA add-on) nor config.json "
            "(a base model)."
        )
    if display_name is not None:
        body["displayName"] = display_name
    if description is not None:
        body["description"] = description
    return body


def _read(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            progress.update(task, advance=len(chunk))
            yield chunk


def _upload(call: Call, urls: dict[str, str], files: list[Path]) -> None:
    """PUT each file to its signed URL, streamed, with one progress bar per file."""
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=call.printer().stderr,
        transient=call.printer().is_json,
    )
    with progress, httpx.Client(timeout=httpx.Timeout(600.0, connect=30.0)) as http:
        for path in files:
            size = path.stat().st_size
            task = progress.add_task(path.name, total=size)
            try:
                response = http.put(
                    urls[path.name],
                    content=_read(path, progress, task),
                    headers={"Content-Length": str(size)},
                )
            except httpx.TransportError as exc:
                raise CliError(f"Uploading {path.name} failed: {exc}") from None
            if response.is_error:
                raise ApiError(response.status_code, f"Uploading {path.name}: {response.text}")


def _problems(error: ApiError) -> str:
    """The validation's problems, one per line (the server lists them as ``- file: why``)."""
    lines = [line for line in error.message.splitlines() if line.startswith("- ")]
    return "\n".join(lines) if lines else error.message


def create_model(
    ctx: typer.Context,
    *,
    model_id: Annotated[str, typer.Argument(metavar="ID", help="Id of the new model.")],
    path: Annotated[
        Path, typer.Argument(metavar="PATH", help="Local folder: a PEFT adapter or a HF model.")
    ],
    base_model: Annotated[
        str | None,
        typer.Option(
            help="The add-on's base model (accounts/<a>/models/<id>).", show_default=False
        ),
    ] = None,
    display_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    description: Annotated[str | None, typer.Option(help="Description.")] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Upload a local LoRA adapter or model folder as a new model, then validate it."""
    call = Call.of(ctx, account=account, output=output)
    files = _folder_files(path)
    body = _model_body(path, base_model, display_name, description)
    models = f"/v1/accounts/{segment(call.account())}/models"
    model_path = f"{models}/{segment(model_id)}"
    with call.client() as api:
        api.post(models, {"modelId": model_id, "model": body})
        sizes = {p.name: str(p.stat().st_size) for p in files}
        urls = api.post(f"{model_path}:getUploadEndpoint", {"filenameToSize": sizes})
        _upload(call, dict(urls.get("filenameToSignedUrls") or {}), files)
        result = _validate(api, model_path)
        model = api.get(model_path)
    for warning in result.get("warnings") or []:
        call.printer().note(f"warning: {warning}")
    call.printer().resource(model)


def _validate(api: ApiClient, model_path: str) -> dict[str, Any]:
    try:
        return api.get(f"{model_path}:validateUpload")
    except ApiError as exc:
        if exc.code != "invalid_upload":
            raise
        exc.message = (
            f"The uploaded files were refused; the model stays UPLOADING:\n{_problems(exc)}"
        )
        raise


def list_deployed_models(
    ctx: typer.Context, account: AccountOption = None, output: OutputOption = None
) -> None:
    """List the LoRA add-ons loaded for serving in the account."""
    call = Call.of(ctx, account=account, output=output)
    path = f"/v1/accounts/{segment(call.account())}/deployedModels"
    with call.client() as api:
        listing = api.list_all(path, "deployedModels")
    call.printer().listing(
        listing.items, DEPLOYED_COLUMNS, field="deployedModels", total_size=listing.total_size
    )


def load_lora(
    ctx: typer.Context,
    *,
    model: Annotated[
        str, typer.Argument(metavar="MODEL", help="The add-on: accounts/<a>/models/<id> or id.")
    ],
    deployment: Annotated[
        str | None,
        typer.Option(help="Load onto this deployment (default: serverless).", show_default=False),
    ] = None,
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Load a LoRA add-on for serving (POST deployedModels)."""
    call = Call.of(ctx, account=account, output=output)
    name = _model_path(call, model).removeprefix("/v1/")
    body: dict[str, Any] = {"model": name}
    if deployment:
        body["deployment"] = deployment
    with call.client() as api:
        loaded = api.post(f"/v1/accounts/{segment(call.account())}/deployedModels", body)
    call.printer().resource(loaded)


def unload_lora(
    ctx: typer.Context,
    *,
    target: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="Deployed model id, or the add-on's accounts/<a>/models/<id>."
        ),
    ],
    account: AccountOption = None,
    output: OutputOption = None,
) -> None:
    """Stop serving a loaded LoRA add-on (DELETE deployedModels/ID)."""
    call = Call.of(ctx, account=account, output=output)
    base = f"/v1/accounts/{segment(call.account())}/deployedModels"
    with call.client() as api:
        ids = [target]
        if "/models/" in target:
            listing = api.list_all(base, "deployedModels")
            ids = [str(d["name"]).rsplit("/", 1)[-1] for d in listing.items if d["model"] == target]
            if not ids:
                raise UsageError(f"{target} is not loaded in {call.account()!r}.")
        for deployed_id in ids:
            api.request("DELETE", f"{base}/{segment(deployed_id.rsplit('/', 1)[-1])}")
    call.printer().done(f"Unloaded {', '.join(ids)}.", {})


def register(verbs: Verbs) -> None:
    verbs.create.command("model")(create_model)
    verbs.get.command("model")(get_model)
    verbs.update.command("model")(update_model)
    verbs.delete.command("model")(delete_model)
    verbs.list.command("models")(list_models)
    verbs.list.command("deployed-models")(list_deployed_models)


def register_root(root: typer.Typer) -> None:
    """The verbs only models have: ``load-lora`` and ``unload-lora``."""
    root.command("load-lora")(load_lora)
    root.command("unload-lora")(unload_lora)
