"""Terminal output shared by the CLI and the library: one console, quiet and JSON modes, progress.

Results go to stdout; progress, notices and errors go to stderr, so `--json` output stays clean to
pipe into other tools.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass
class OutputMode:
    quiet: bool = False
    json: bool = False
    debug: bool = False


mode = OutputMode()
# Rich assumes 80 columns when stdout is not a terminal (CI logs, pipes), which folds wide tables
# into unreadable cells; COLUMNS still wins when set.
_PIPE_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200
stdout = Console(highlight=False, width=_PIPE_WIDTH)
stderr = Console(stderr=True, highlight=False)


def notice(message: str) -> None:
    """An informational line on stderr, silenced by --quiet; one line however long (the terminal
    wraps it, not rich), so logs and tests see each notice whole."""
    if not mode.quiet:
        stderr.print(message, soft_wrap=True)


def progress() -> Progress:
    """A progress bar on stderr, disabled by --quiet and --json."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=stderr,
        disable=mode.quiet or mode.json,
        transient=True,
    )


def emit_json(payload: object) -> None:
    """`payload` as JSON on stdout (`--json`)."""
    stdout.print_json(json.dumps(payload, default=str))


def show_written(path: Path, report: dict[str, Any], view: Callable[[dict[str, Any]], Any]) -> None:
    """What a command that wrote an artifact prints: its report (JSON with `--json`, the rendered
    `view` otherwise) and where it went; `--quiet` prints the path alone."""
    if mode.json:
        emit_json({"artifact": str(path), **report})
    elif not mode.quiet:
        stdout.print(view(report))
        stdout.print(f"[green]wrote[/green] {path}")
    else:
        stdout.print(str(path))
