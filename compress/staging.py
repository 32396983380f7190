"""Atomic directory writes that survive kills and concurrent writers.

Every artifact, baseline store and demo model is built in a staging directory beside its target
(`OUT.tmp-*`) and renamed into place at the end, so a reader never sees half of one. Three things
make that safe when runs are killed or overlap:

- **Staging carries its owner** (`ownership.OWNER_FILE`: host, pid and the pid's start time, so a
  recycled pid is not mistaken for the owner). A run removes only staging whose recorded owner
  is gone; another live run's staging, and any directory without our record (a user's
  `OUT.tmp-keep`, whatever its age), is left alone.
- **Publishing holds a lock** on the target's parent directory (`flock`), so two writers that
  finish together replace one another in turn: both succeed and the target is one complete
  directory, the last one published.
- **A replace that was killed half-way** (old target renamed to `OUT.old-*` with a retirement
  record naming its target, new one not yet in place) is repaired by the next run that writes to
  the same target: it restores the old directory when nothing is in place, or removes the
  leftover when the new one is, and says so. A user's own `OUT.old-v1` carries no record and is
  never touched.

What may be written or replaced at all is `ownership.py`'s decision.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from compress import console
from compress.modeling import MANIFEST_NAME
from compress.ownership import OWNER_FILE, RETIRED_FILE, check_output_dir, check_replaceable


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


def _read_record(directory: Path, name: str) -> dict | None:
    """A record we wrote into `directory`, or None (absent, unreadable, or not a directory of ours)."""
    if directory.is_symlink() or not directory.is_dir():
        return None
    try:
        record = json.loads((directory / name).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _dead_staging(staging: Path) -> bool:
    """Staging we own whose run is gone. One without our owner record is not ours to judge: a
    kill in the instant between creating it and writing the record leaves it, and it stays."""
    record = _read_record(staging, OWNER_FILE)
    return record is not None and not _owner_alive(record)


def _dead_retired(retired: Path, out: Path) -> bool:
    """A directory a `--force` replace of `out` moved aside, whose run is gone."""
    record = _read_record(retired, RETIRED_FILE)
    return record is not None and record.get("target") == out.name and not _owner_alive(record)


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
        if _dead_staging(stale):
            shutil.rmtree(stale, ignore_errors=True)
    for retired in sorted(out.parent.glob(f"{out.name}.old-*")):
        if not _dead_retired(retired, out):
            continue
        if not out.exists() and not out.is_symlink() and (retired / marker).is_file():
            retired.rename(out)
            (out / RETIRED_FILE).unlink(missing_ok=True)
            console.notice(f"restored {out} from {retired.name}, left by an interrupted --force replace")
        else:
            shutil.rmtree(retired, ignore_errors=True)
            console.notice(f"removed {retired}, left by an interrupted --force replace")


@contextmanager
def staged_directory(
    out: Path, force: bool = False, marker: str = MANIFEST_NAME, inputs: Iterable[Path] = ()
) -> Iterator[Path]:
    """Yield a staging directory; on success it replaces `out`, on any exception it is removed.

    `marker` is the file written last (the manifest for artifacts): publishing without it is a bug,
    and only a directory holding it (or an empty one) is ever replaced. `inputs` are the paths the
    command reads, which `out` may not be, contain or lie inside.
    """
    out = _named(Path(out))
    check_output_dir(out, force, inputs, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _parent_lock(out.parent):
        _tidy(out, marker)
    check_output_dir(out, force, inputs, marker)  # the tidy-up may have restored a retired `out`
    staging = out.parent / f"{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_record(staging / OWNER_FILE, _owner_record())
        yield staging
        if not (staging / marker).is_file():
            raise RuntimeError(f"internal error: {out} was staged without its {marker}")
        with _parent_lock(out.parent):
            _publish(staging, out, marker=marker)  # `out` last: kill tests match on it
        # The owner record goes only once published: staging killed just before its rename still
        # names a dead owner, so the next run removes it at once rather than after the grace period.
        (out / OWNER_FILE).unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _named(out: Path) -> Path:
    """`out` with `.` and `..` folded, so `--out .` has a name and a parent to stage beside."""
    return Path(os.path.abspath(out.expanduser())) if not out.name or out.name in (".", "..") else out


def _write_record(path: Path, record: dict) -> None:
    """Write a record through a temporary name: a kill leaves it whole or absent, never half."""
    temporary = path.with_name(path.name + ".partial")
    temporary.write_text(json.dumps(record))
    temporary.rename(path)


def _publish(staging: Path, out: Path, marker: str) -> None:
    """Rename the finished staging directory into place, replacing an old `out` only at the end.

    The old directory is moved aside with a retirement record, so a kill before it is removed
    leaves something the next run knows to be ours (and restores, when nothing replaced it).
    """
    if not out.exists():
        staging.rename(out)
        return
    check_replaceable(out, marker)  # again under the lock: something else may have appeared there
    retired = out.parent / f"{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(retired)
    _write_record(retired / RETIRED_FILE, {**_owner_record(), "target": out.name})
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)
