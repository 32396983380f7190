"""Atomic directory writes that survive kills and concurrent writers.

Every artifact, baseline store and demo model is built in a staging directory beside its target
(`OUT.tmp-*`) and renamed into place at the end, so a reader never sees half of one. Three things
make that safe when runs are killed or overlap:

- **Staging carries its owner** (`.compress-owner.json`: host, pid and the pid's start time, so a
  recycled pid is not mistaken for the owner). A run removes only staging whose owner is gone;
  another live run's staging is left alone.
- **Publishing holds a lock** on the target's parent directory (`flock`), so two writers that
  finish together replace one another in turn: both succeed and the target is one complete
  directory, the last one published.
- **A replace that was killed half-way** (old target renamed to `OUT.old-*`, new one not yet in
  place) is repaired by the next run that writes to the same target: it restores the old
  directory when nothing is in place, or removes the leftover when the new one is, and says so.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compress import console
from compress.artifact import check_output_path
from compress.modeling import MANIFEST_NAME

OWNER_FILE = ".compress-owner.json"
#: Staging with no owner file yet is presumed live for this long (its owner is about to write it).
UNOWNED_GRACE_SECONDS = 120


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces


def _owner_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _start_time(os.getpid())}


def _owner_alive(record: dict) -> bool:
    """Whether the process that wrote `record` still runs. Another host's cannot be checked: alive."""
    if record.get("host") != socket.gethostname():
        return True
    start = _start_time(int(record.get("pid", -1)))
    return start is not None and start == record.get("start")


def _is_stale(staging: Path) -> bool:
    try:
        record = json.loads((staging / OWNER_FILE).read_text())
    except FileNotFoundError:
        try:
            return time.time() - staging.stat().st_mtime > UNOWNED_GRACE_SECONDS
        except FileNotFoundError:
            return False  # published or removed meanwhile
    except (OSError, ValueError):
        return True  # an unreadable owner file was not written by a live run of ours
    return not _owner_alive(record)


@contextmanager
def _parent_lock(directory: Path) -> Iterator[None]:
    """An exclusive lock on `directory` itself (no lock file left behind), held for the block."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _tidy(out: Path, marker: str) -> None:
    """Remove dead runs' staging and repair a replace that a kill interrupted (under the lock)."""
    for stale in out.parent.glob(f"{out.name}.tmp-*"):
        if stale.is_dir() and _is_stale(stale):
            shutil.rmtree(stale, ignore_errors=True)
    for retired in sorted(out.parent.glob(f"{out.name}.old-*")):
        if not out.exists() and (retired / marker).is_file():
            retired.rename(out)
            console.notice(f"restored {out} from {retired.name}, left by an interrupted --force replace")
        else:
            shutil.rmtree(retired, ignore_errors=True)
            console.notice(f"removed {retired}, left by an interrupted --force replace")


@contextmanager
def staged_directory(out: Path, force: bool = False, marker: str = MANIFEST_NAME) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces `out`, on any exception it is removed.

    `marker` is the file written last (the manifest for artifacts): publishing without it is a bug.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(out.parent):
        _tidy(out, marker)
    check_output_path(out, force)
    staging = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        (staging / OWNER_FILE).write_text(json.dumps(_owner_record()))
        yield staging
        if not (staging / marker).is_file():
            raise RuntimeError(f"internal error: {out} was staged without its {marker}")
        with _parent_lock(out.parent):
            _publish(staging, out)
        # The owner record goes only once published: staging killed just before its rename still
        # names a dead owner, so the next run removes it at once rather than after the grace period.
        (out / OWNER_FILE).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging directory into place, replacing an old `out` only at the end."""
    if not out.exists():
        staging.rename(out)
        return
    retired = out.parent / f"{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(retired)
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)
