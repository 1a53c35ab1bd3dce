"""One progress display for every long command (train, batch, data cache): a rich bar on a terminal,
plain lines otherwise (a log file gets a line at most every `every_s` seconds), nothing when quiet."""
from __future__ import annotations

import sys
import time


class Progress:
    """`start(total, label)`, then `step(done, info)` (absolute) or `advance(n, info)`; `line(text)` prints
    above the bar; `close()` at the end."""

    def __init__(self, quiet: bool = False, every_s: float = 10.0):
        from rich.console import Console

        self.quiet = quiet
        self.console = Console(stderr=True)
        self.bar = None
        self.tty = sys.stderr.isatty()
        self.every_s, self.last = every_s, 0.0
        self.label, self.total, self.done = "", 0, 0

    def start(self, total: int, label: str = "") -> None:
        self.label, self.total, self.done = label, total, 0
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeRemainingColumn

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=self.console)
            self.task = self.bar.add_task(label, total=total, info="")
            self.bar.start()

    def step(self, done: int, info: str = "", description: str | None = None) -> None:
        self.done = done
        if self.bar:
            self.bar.update(self.task, completed=done, info=info,
                            **({"description": description} if description is not None else {}))
        elif not self.quiet and not self.tty and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            self.line(f"{description or self.label} {done}/{self.total} {info}".strip())

    def advance(self, n: int = 1, info: str = "") -> None:
        self.step(self.done + n, info)

    def line(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()
            self.bar = None
