"""Progress on stderr (rich), so stdout carries only results."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def byte_progress(label: str, total: int):
    """Yield ``advance(nbytes)``; draws a transfer bar on stderr when it is a terminal, and a few
    plain lines (25/50/75/100%) otherwise, so logs stay readable. ``total`` may be an estimate: a use
    that ends without an error always ends at 100%, one that fails does not claim it."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    console = Console(stderr=True)
    if not sys.stderr.isatty():
        done = [0, 0]  # bytes, quarters printed

        def say(quarter: int) -> None:
            done[1] = quarter
            console.print(f"{label}: {25 * quarter}% ({done[0] / 1e6:.1f} MB)", highlight=False)

        def advance(n: int) -> None:
            done[0] += n
            quarter = min(4, 4 * done[0] // max(total, 1))
            if quarter > done[1]:
                say(quarter)

        yield advance
        if done[1] < 4:
            say(4)
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:  # pragma: no cover - tty only
        task, moved = bar.add_task(label, total=total), [0]

        def advance_bar(n: int) -> None:
            moved[0] += n
            bar.advance(task, n)

        yield advance_bar
        bar.update(task, total=moved[0] or total, completed=moved[0] or total)
