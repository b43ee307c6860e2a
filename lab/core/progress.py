"""Progress for long steps: a spinner with the latest detail (image builds, boots) or a
bar (suites) on a terminal, plain timestamped lines when stderr is not a terminal (CI
logs), nothing when quiet."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO


class Step:
    def __init__(self, progress: "Progress", title: str):
        self.progress = progress
        self.title = title
        self.started = time.monotonic()
        self._last_line = 0.0
        self._status: Any = None

    def update(self, detail: str) -> None:
        detail = detail.strip()
        if not detail or self.progress.quiet:
            return
        if self._status is not None:
            self._status.update(f"{self.title}: [dim]{_escape(detail[:100])}[/dim]")
        elif time.monotonic() - self._last_line >= 2.0:
            # Plain output: one line now and then, not one per event.
            self._last_line = time.monotonic()
            self.progress.line(f"{self.title}: {detail[:160]}")

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


class Bar:
    """A count of items done out of a known total, and the item now running."""

    def __init__(self, progress: "Progress", title: str, total: int):
        self.progress = progress
        self.title = title
        self.total = total
        self.done = 0
        self._rich: Any = None
        self._task: Any = None

    def start(self, item: str) -> None:
        if self._rich is not None:
            self._rich.update(self._task, item=_escape(item))
        else:
            self.progress.line(f"{self.title}: {self.done + 1}/{self.total} {item} ...")

    def advance(self) -> None:
        self.done += 1
        if self._rich is not None:
            self._rich.update(self._task, advance=1, item="")


class Progress:
    def __init__(self, quiet: bool = False, stream: TextIO | None = None):
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._console = None
        if self.tty and not quiet:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """Something the user should know even when quiet (stale state cleaned up)."""
        print(f"kvmlab: note: {text}", file=self.stream, flush=True)

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        step = Step(self, title)
        if self.quiet:
            yield step
            return
        if self._console is not None:
            with self._console.status(_escape(title)) as status:
                step._status = status
                yield step
            self._console.print(f"[green]✓[/green] {_escape(title)} [dim]({step.seconds:.1f} s)[/dim]")
        else:
            self.line(f"{title} ...")
            yield step
            self.line(f"{title}: done ({step.seconds:.1f} s)")

    @contextmanager
    def bar(self, title: str, total: int) -> Iterator["Bar"]:
        """A bar for `total` items (a suite's scenarios); start(item) / advance() as they run."""
        bar = Bar(self, title, total)
        if self.quiet:
            yield bar
            return
        if self._console is None:
            started = time.monotonic()
            yield bar
            self.line(f"{title}: {bar.done}/{total} done ({time.monotonic() - started:.1f} s)")
            return
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        with RichProgress(SpinnerColumn(), TextColumn(_escape(title)), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("[dim]{task.fields[item]}"), console=self._console,
                          transient=True) as rich:
            bar._rich = rich
            bar._task = rich.add_task(title, total=total, item="")
            yield bar


def stamp(text: str) -> str:
    """A result line for stdout: timestamped when stdout is a log, not a terminal."""
    return text if sys.stdout.isatty() else f"[{time.strftime('%H:%M:%S')}] {text}"
