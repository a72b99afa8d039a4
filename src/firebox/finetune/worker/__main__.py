"""``python -m firebox.finetune.worker SPEC.json``: train one job, speaking ``protocol``."""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import TextIO

from firebox.finetune.worker.protocol import Event, TrainSpec


class Control:
    """Commands from stdin; end of input (the runner is gone) counts as ``pause``."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._command: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._read, name="control", daemon=True).start()

    def _read(self) -> None:
        for line in self._stream:
            try:
                command = json.loads(line).get("command")
            except (ValueError, AttributeError):
                continue
            if command in ("pause", "cancel"):
                self._set(str(command))
        self._set("pause")

    def _set(self, command: str) -> None:
        with self._lock:
            if self._command != "cancel":  # a cancel is never softened into a pause
                self._command = command

    def requested(self) -> str | None:
        with self._lock:
            return self._command


def main(argv: list[str]) -> int:
    # Events own the real stdout; anything a library prints goes to stderr.
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def emit(event: Event) -> None:
        events.write(event.line() + "\n")
        events.flush()

    control = Control(sys.stdin)
    control.start()
    try:
        from firebox.finetune.worker.trainer import Trainer  # torch loads here, after the pipes

        spec = TrainSpec.read(Path(argv[1]))
        if spec.nice > 0 and hasattr(os, "nice"):
            os.nice(spec.nice)  # training yields the CPU to the gateway and its engines
        emit(Trainer(spec, emit, control.requested).run())
        return 0
    except Exception as exc:
        traceback.print_exc()
        emit(Event("failed", message=f"{type(exc).__name__}: {exc}"))
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
