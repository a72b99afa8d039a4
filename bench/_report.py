"""The gateway-overhead results: figures per cell, the console table, the Markdown record.

A cell is one (stream, concurrency); each holds one ``Figures`` per target.
``docs/benchmarks.md`` keeps, under ``## Gateway overhead``, the latest full
run and the latest quick run between comment markers; the notes between the
``notes`` markers (written by hand) are kept as they are.
"""

from __future__ import annotations

import re
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

DIRECT, FIREBOX, BASELINE, LITELLM = "upstream", "firebox", "baseline", "litellm"
ORDER = (DIRECT, FIREBOX, BASELINE, LITELLM)
HEADING = "## Gateway overhead"
ADDED_P50_TARGET_MS = 1.0
RPS_RATIO_TARGET = 5.0


@dataclass(frozen=True)
class Figures:
    """One target in one cell (the median over rounds); no latency if nothing completed."""

    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int

    @staticmethod
    def median(rounds: Sequence[Figures]) -> Figures:
        def med(values: list[float | None]) -> float | None:
            known = [v for v in values if v is not None]
            return statistics.median(known) if known else None

        return Figures(
            rps=statistics.median(r.rps for r in rounds),
            p50_ms=med([r.p50_ms for r in rounds]),
            p99_ms=med([r.p99_ms for r in rounds]),
            errors=sum(r.errors for r in rounds),
        )


@dataclass
class Cell:
    stream: bool
    concurrency: int
    targets: dict[str, Figures] = field(default_factory=dict)

    def added_p50(self, target: str) -> float | None:
        """The target's p50 minus the upstream's, in ms."""
        mine, direct = self.targets.get(target), self.targets.get(DIRECT)
        if mine is None or direct is None or mine.p50_ms is None or direct.p50_ms is None:
            return None
        return mine.p50_ms - direct.p50_ms

    def rps_ratio(self, over: str, under: str) -> float | None:
        a, b = self.targets.get(over), self.targets.get(under)
        return a.rps / b.rps if a and b and b.rps > 0 else None

    def added_ratio(self, over: str, under: str) -> float | None:
        """How many times ``over`` adds to the p50 what ``under`` adds (a 10 µs floor)."""
        a, b = self.added_p50(over), self.added_p50(under)
        return a / max(b, 0.01) if a is not None and b is not None else None


@dataclass
class Run:
    """One invocation: its cells, the facts that go with its figures, the target labels."""

    cells: list[Cell]
    facts: dict[str, str]
    mode: str  # "full" or "quick"
    labels: dict[str, str]

    def targets(self) -> list[str]:
        present = {t for c in self.cells for t in c.targets}
        return [t for t in ORDER if t in present]

    def ratio_columns(self) -> list[tuple[str, Callable[[Cell], str]]]:
        """(heading, cell -> text) for each ratio this run can show."""
        lab, present = {FIREBOX: "Firebox", BASELINE: "baseline"} | self.labels, set(self.targets())
        columns = [
            (f"{lab[FIREBOX]}/upstream req/s", lambda c: _num(c.rps_ratio(FIREBOX, DIRECT))),
        ]
        if LITELLM in present:
            columns += [
                (f"{lab[FIREBOX]}/LiteLLM req/s", lambda c: _x(c.rps_ratio(FIREBOX, LITELLM))),
                (
                    f"LiteLLM/{lab[FIREBOX]} added p50",
                    lambda c: _x(c.added_ratio(LITELLM, FIREBOX)),
                ),
            ]
        if BASELINE in present:
            columns.append(
                (
                    f"{lab[FIREBOX]}/{lab[BASELINE]} req/s",
                    lambda c: _x(c.rps_ratio(FIREBOX, BASELINE)),
                )
            )
        return columns


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}x"


def _mode(stream: bool) -> str:
    return "stream" if stream else "plain"


def print_table(run: Run, console: Console | None = None) -> None:
    """The figures and the ratios as two compact Rich tables, then the reading."""
    if console is None:  # piped into a file or a log: wide enough for the ratio headings
        console = Console() if sys.stdout.isatty() else Console(width=130)
    figures = Table(title="requests/s and latency (ms)", title_justify="left")
    for column in ("mode", "c", "target", "req/s", "p50", "p99", "added p50", "errors"):
        figures.add_column(column, justify="left" if column in ("mode", "target") else "right")
    for cell in run.cells:
        for target in run.targets():
            f = cell.targets[target]
            added = None if target == DIRECT else cell.added_p50(target)
            figures.add_row(
                _mode(cell.stream),
                str(cell.concurrency),
                run.labels[target],
                f"{f.rps:,.0f}",
                _ms(f.p50_ms),
                _ms(f.p99_ms),
                _ms(added),
                str(f.errors),
            )
        figures.add_section()
    console.print(figures)
    ratios = Table(title="ratios", title_justify="left")
    columns = run.ratio_columns()
    for heading in ("mode", "c", *(h for h, _ in columns)):
        ratios.add_column(heading, justify="left" if heading == "mode" else "right")
    for cell in run.cells:
        ratios.add_row(_mode(cell.stream), str(cell.concurrency), *(f(cell) for _, f in columns))
    console.print(ratios)
    console.print(reading(run))


def reading(run: Run) -> str:
    """The verdict on the two targets, in words, from the figures."""
    parts: list[str] = []
    c1 = [c for c in run.cells if c.concurrency == 1 and c.added_p50(FIREBOX) is not None]
    if c1:
        added = ", ".join(f"{_ms(c.added_p50(FIREBOX))} ms {_mode(c.stream)}" for c in c1)
        met = all((c.added_p50(FIREBOX) or 0) <= ADDED_P50_TARGET_MS for c in c1)
        parts.append(
            f"Firebox's added p50 at concurrency 1 is {added} "
            f"(target ≤ {ADDED_P50_TARGET_MS:g} ms: {'met' if met else 'missed'})"
        )
        lite = [c for c in c1 if c.added_p50(LITELLM) is not None]
        if lite:
            parts.append(
                "LiteLLM adds "
                + ", ".join(f"{_ms(c.added_p50(LITELLM))} ms {_mode(c.stream)}" for c in lite)
            )
    top = max((c.concurrency for c in run.cells), default=0)
    heavy = [c for c in run.cells if c.concurrency == top and LITELLM in c.targets]
    if heavy:
        ratios = [c.rps_ratio(FIREBOX, LITELLM) for c in heavy]
        text = ", ".join(f"{_x(r)} {_mode(c.stream)}" for r, c in zip(ratios, heavy, strict=True))
        verdict = (
            "met" if all(r is not None and r >= RPS_RATIO_TARGET for r in ratios) else "missed"
        )
        parts.append(
            f"at concurrency {top} Firebox serves {text} LiteLLM's requests/s "
            f"(target ≥ {RPS_RATIO_TARGET:g}x: {verdict})"
        )
        if any(r is None for r in ratios):
            parts.append("LiteLLM completed no request in a measurement there: run longer")
    base = [c for c in run.cells if c.rps_ratio(FIREBOX, BASELINE) is not None]
    if base:
        low = min(c.rps_ratio(FIREBOX, BASELINE) or 0 for c in base)
        high = max(c.rps_ratio(FIREBOX, BASELINE) or 0 for c in base)
        parts.append(
            f"this tree serves {low:.2f}x to {high:.2f}x the requests/s of {run.labels[BASELINE]}"
        )
    errors = sum(f.errors for c in run.cells for f in c.targets.values())
    if errors:
        parts.append(f"{errors} requests failed (see the errors column)")
    return "; ".join(parts) + "." if parts else "No figures."


def markdown(run: Run) -> str:
    """The run's record: facts, the figures table, the ratios table and the reading."""
    title = "Latest full run" if run.mode == "full" else "Latest quick run"
    lines = [f"### {title} ({run.facts['date']})", ""]
    lines += [f"- {name}: {value}" for name, value in run.facts.items() if name != "date"]
    targets = run.targets()
    head = ["mode", "c"]
    for t in targets:
        head += [f"{run.labels[t]} req/s", f"{run.labels[t]} p50 / p99 ms"]
    head += [f"{run.labels[t]} added p50 ms" for t in targets if t != DIRECT]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in run.cells:
        row = [_mode(cell.stream), str(cell.concurrency)]
        for t in targets:
            f = cell.targets[t]
            errors = f" ({f.errors} errors)" if f.errors else ""
            row += [f"{f.rps:,.0f}{errors}", f"{_ms(f.p50_ms)} / {_ms(f.p99_ms)}"]
        row += [_ms(cell.added_p50(t)) for t in targets if t != DIRECT]
        lines.append("| " + " | ".join(row) + " |")
    columns = run.ratio_columns()
    head = ["mode", "c", *(h for h, _ in columns)]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in run.cells:
        row = [_mode(cell.stream), str(cell.concurrency), *(f(cell) for _, f in columns)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Reading: {reading(run)}", ""]
    return "\n".join(lines)


INTRO = """\
`bench/gateway_overhead.py` (see `bench/README.md`) starts, on loopback, the
fake vLLM-shaped upstream (`tests/support/fake_upstream.py`, no token delay),
Firebox pointed at it (auth, metering and every admission check that exists
now), and the LiteLLM proxy (one worker, no database, master key) pointed at
it; then wrk loads each in turn, interleaved cell by cell, with a chat
completion of `max_tokens` 16. "added p50" is the gateway's p50 minus the
upstream's p50 at the same settings; for streams, latency is to the last
byte of the SSE body. The machine is shared with other work: absolute
figures move by up to 2x or more between runs (even the upstream's own), so
read the ratios (measured within one run) rather than the absolute figures.
"""


def record(path: Path, run: Run) -> None:
    """Write ``run`` into its block of the Gateway overhead section of ``path``."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start = text.find(HEADING + "\n")
    if start == -1:
        before, section, after = text.rstrip("\n") + "\n\n", "", ""
    else:
        following = re.search(r"^## ", text[start + len(HEADING) :], re.MULTILINE)
        end = start + len(HEADING) + following.start() if following else len(text)
        before, section, after = text[:start], text[start:end], text[end:]
    blocks = {name: _block(section, name) for name in ("full", "quick", "notes")}
    blocks[run.mode] = markdown(run)
    parts = [HEADING, "", INTRO]
    for name in ("full", "quick", "notes"):
        block = blocks[name]
        if block is not None:
            parts += [f"<!-- gateway-overhead:{name} -->", block.strip("\n"), ""]
            parts += [f"<!-- /gateway-overhead:{name} -->", ""]
    new_section = "\n".join(parts)
    path.write_text(before + new_section + ("\n" + after.lstrip("\n") if after else ""))


def _block(section: str, name: str) -> str | None:
    match = re.search(
        rf"<!-- gateway-overhead:{name} -->\n(.*?)<!-- /gateway-overhead:{name} -->",
        section,
        re.DOTALL,
    )
    return match.group(1) if match else None
