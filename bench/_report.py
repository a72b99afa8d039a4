"""The gateway-overhead results: figures per cell, the console table, the Markdown record.

A cell is one (stream, concurrency); each holds one ``Figures`` per target.
The targets are the upstream, up to three Firebox variants (enforcement off;
on with in-process counters; on with Redis and PostgreSQL), optionally
Firebox at a baseline revision, and LiteLLM. ``docs/benchmarks.md`` keeps,
under ``## Gateway overhead``, the latest full run and the latest quick run
between comment markers; the ``history`` and ``notes`` blocks (written by
hand) are kept as they are.
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

DIRECT, BASELINE, LITELLM = "upstream", "baseline", "litellm"
FIREBOX_OFF, FIREBOX, FIREBOX_REDIS = "firebox-off", "firebox", "firebox-redis"
FIREBOXES = (FIREBOX_OFF, FIREBOX, FIREBOX_REDIS)
ORDER = (DIRECT, *FIREBOXES, BASELINE, LITELLM)
SHORT = {FIREBOX_OFF: "off", FIREBOX: "in-process", FIREBOX_REDIS: "Redis+PG"}
BLOCKS = ("full", "quick", "history", "notes")
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

    def fireboxes(self) -> list[str]:
        """The Firebox variants in this run, in ``FIREBOXES`` order."""
        return [t for t in self.targets() if t in FIREBOXES]

    def enforced(self) -> bool:
        return any(t in (FIREBOX, FIREBOX_REDIS) for t in self.targets())

    def errors_by_target(self) -> dict[str, int]:
        """Failed requests (non-2xx, socket errors, timeouts) per target, all cells."""
        return {t: sum(c.targets[t].errors for c in self.cells) for t in self.targets()}

    def ratio_columns(self) -> list[tuple[str, Callable[[Cell], str]]]:
        """(heading, cell -> text) for each ratio this run can show."""
        present, fireboxes = set(self.targets()), self.fireboxes()
        columns: list[tuple[str, Callable[[Cell], str]]] = []

        def rps(over: str, under: str) -> Callable[[Cell], str]:
            return lambda c: _x(c.rps_ratio(over, under))

        def added(over: str, under: str) -> Callable[[Cell], str]:
            return lambda c: _x(c.added_ratio(over, under))

        for t in fireboxes if LITELLM in present else []:
            columns.append((f"{SHORT[t]}/LiteLLM req/s", rps(t, LITELLM)))
        for t in fireboxes if LITELLM in present else []:
            columns.append((f"LiteLLM/{SHORT[t]} added p50", added(LITELLM, t)))
        for t in fireboxes if FIREBOX_OFF in present else []:
            if t != FIREBOX_OFF:
                columns.append((f"{SHORT[t]}/off req/s", rps(t, FIREBOX_OFF)))
        if BASELINE in present and fireboxes:
            main = FIREBOX if FIREBOX in present else fireboxes[0]
            label = self.labels[BASELINE]
            columns.append((f"{SHORT[main]}/{label} req/s", rps(main, BASELINE)))
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
        console = Console() if sys.stdout.isatty() else Console(width=200)
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


def _verdict(run: Run, target: str) -> str:
    """One Firebox variant against the two targets."""
    label, parts = run.labels[target], []
    c1 = [c for c in run.cells if c.concurrency == 1 and c.added_p50(target) is not None]
    if c1:
        added = ", ".join(f"{_ms(c.added_p50(target))} ms {_mode(c.stream)}" for c in c1)
        met = all((c.added_p50(target) or 0) <= ADDED_P50_TARGET_MS for c in c1)
        parts.append(
            f"adds {added} to the p50 at concurrency 1 "
            f"(target ≤ {ADDED_P50_TARGET_MS:g} ms: {'met' if met else 'missed'})"
        )
    top = max((c.concurrency for c in run.cells), default=0)
    heavy = [c for c in run.cells if c.concurrency == top and LITELLM in c.targets]
    if heavy:
        ratios = [c.rps_ratio(target, LITELLM) for c in heavy]
        text = ", ".join(f"{_x(r)} {_mode(c.stream)}" for r, c in zip(ratios, heavy, strict=True))
        ok = all(r is not None and r >= RPS_RATIO_TARGET for r in ratios)
        parts.append(
            f"serves {text} LiteLLM's requests/s at concurrency {top} "
            f"(target ≥ {RPS_RATIO_TARGET:g}x: {'met' if ok else 'missed'})"
        )
    return f"{label} " + " and ".join(parts) if parts else ""


def reading(run: Run) -> str:
    """The verdict on the two targets per Firebox variant, in words, from the figures."""
    parts = [v for v in (_verdict(run, t) for t in run.fireboxes()) if v]
    c1 = [c for c in run.cells if c.concurrency == 1 and c.added_p50(LITELLM) is not None]
    if c1:
        parts.append(
            "LiteLLM adds "
            + ", ".join(f"{_ms(c.added_p50(LITELLM))} ms {_mode(c.stream)}" for c in c1)
            + " at concurrency 1"
        )
    top = max((c.concurrency for c in run.cells), default=0)
    heavy = [c for c in run.cells if c.concurrency == top and LITELLM in c.targets]
    if any(c.targets[LITELLM].rps == 0 for c in heavy):
        parts.append("LiteLLM completed no request in a measurement there: run longer")
    if FIREBOX_OFF in run.targets():
        for t in (FIREBOX, FIREBOX_REDIS):
            ratios = [r for c in run.cells if (r := c.rps_ratio(t, FIREBOX_OFF)) is not None]
            if ratios:
                parts.append(
                    f"{run.labels[t]} serves {min(ratios):.2f}x to {max(ratios):.2f}x "
                    f"the requests/s of {run.labels[FIREBOX_OFF]}"
                )
    main = next((t for t in (FIREBOX, *run.fireboxes()) if t in run.targets()), None)
    base = [r for c in run.cells if main and (r := c.rps_ratio(main, BASELINE)) is not None]
    if base and main:
        parts.append(
            f"{run.labels[main]} serves {min(base):.2f}x to {max(base):.2f}x "
            f"the requests/s of {run.labels[BASELINE]}"
        )
    failed = {run.labels[t]: n for t, n in run.errors_by_target().items() if n}
    if failed:
        listed = ", ".join(f"{label} {n}" for label, n in failed.items())
        parts.append(f"FAILED REQUESTS (these figures are not valid): {listed}")
    else:
        parts.append("no request failed (every answer 2xx)")
    return "; ".join(parts) + "." if parts else "No figures."


def markdown(run: Run) -> str:
    """The run's record: facts, the figures (one row per target), ratios, the reading."""
    title = "Latest full run" if run.mode == "full" else "Latest quick run"
    if run.enforced():
        title += ", with enforcement"
    lines = [f"### {title} ({run.facts['date']})", ""]
    lines += [f"- {name}: {value}" for name, value in run.facts.items() if name != "date"]
    head = ["mode", "c", "target", "req/s", "p50 / p99 ms", "added p50 ms", "errors"]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in run.cells:
        for t in run.targets():
            f = cell.targets[t]
            added = "—" if t == DIRECT else _ms(cell.added_p50(t))
            row = [_mode(cell.stream), str(cell.concurrency), run.labels[t]]
            row += [f"{f.rps:,.0f}", f"{_ms(f.p50_ms)} / {_ms(f.p99_ms)}", added, str(f.errors)]
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
Firebox pointed at it in up to three variants (enforcement off; enforcement
on with SQLite and in-process counters; enforcement on with PostgreSQL and
Redis), each called with a member's key of a normal account whose rate,
spend and suspension checks all run and never refuse, and the LiteLLM proxy
(one worker, no database, master key) pointed at it; then wrk loads each in
turn, interleaved cell by cell, with a chat completion of `max_tokens` 16.
"added p50" is the gateway's p50 minus the upstream's p50 at the same
settings; for streams, latency is to the last byte of the SSE body. The
machine is shared with other work: absolute figures move by up to 2x or more
between runs (even the upstream's own), so read the ratios (measured within
one run) rather than the absolute figures.
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
    blocks = {name: _block(section, name) for name in BLOCKS}
    blocks[run.mode] = markdown(run)
    parts = [HEADING, "", INTRO]
    for name in BLOCKS:
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
