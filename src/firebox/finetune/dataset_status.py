"""A validation's outcome on a dataset row: READY with its counts, or its problems and why."""

from __future__ import annotations

from datetime import datetime

from firebox.finetune.dataset_models import DatasetFormat, DatasetLayout, DatasetRow, DatasetState
from firebox.finetune.dataset_validation import Report


def record_report(row: DatasetRow, report: Report, total_bytes: int, now: datetime) -> None:
    """Write a validation's outcome on the dataset: READY with its counts, or why not."""
    row.total_bytes = total_bytes
    row.reserved_bytes = 0
    row.problems = [p.as_dict() for p in report.problems]
    row.update_time = now
    if report.layout is not DatasetLayout.UNKNOWN:
        row.layout = report.layout.value
    if row.format == DatasetFormat.UNSPECIFIED.value:
        row.format = format_of(report.layout).value
    if report.ok:
        row.state = DatasetState.READY.value
        row.status_code, row.status_message = "OK", ""
        row.example_count = report.example_count
        row.estimated_token_count = report.token_count
        row.average_turn_count = round(report.average_turns, 3)
        return
    first = report.problems[0] if report.problems else None
    more = report.problem_count - 1
    row.state = DatasetState.UPLOADING.value
    row.status_code = "INVALID_ARGUMENT"
    row.status_message = (
        f"{report.problem_count} problem(s) in the uploaded files"
        + (f", the first: {first}" if first else "")
        + (f" (and {more} more, listed in validationProblems)" if more > 0 else "")
        + ". Fix the file and upload it again."
    )


def declared_layout(fmt: DatasetFormat) -> DatasetLayout:
    if fmt is DatasetFormat.CHAT:
        return DatasetLayout.CHAT
    if fmt is DatasetFormat.COMPLETION:
        return DatasetLayout.COMPLETION
    return DatasetLayout.UNKNOWN


def format_of(layout: DatasetLayout) -> DatasetFormat:
    if layout is DatasetLayout.CHAT:
        return DatasetFormat.CHAT
    if layout is DatasetLayout.COMPLETION:
        return DatasetFormat.COMPLETION
    return DatasetFormat.UNSPECIFIED
