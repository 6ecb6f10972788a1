"""Progress on stderr (rich), so stdout carries only results."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def byte_progress(label: str, total: int):
    """Yield ``advance(nbytes)``; draws a transfer bar on stderr when it is a terminal, and a few
    plain lines otherwise (logs stay readable)."""
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                               TransferSpeedColumn)

    console = Console(stderr=True)
    if not sys.stderr.isatty():
        done = [0, 0]

        def advance(n: int) -> None:
            done[0] += n
            quarter = min(4, 4 * done[0] // max(total, 1))
            if quarter > done[1]:
                done[1] = quarter
                console.print(f"{label}: {25 * quarter}% ({done[0] / 1e6:.1f} MB)", highlight=False)

        yield advance
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bar:  # pragma: no cover - tty only
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
