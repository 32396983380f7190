"""Staging directories under kills and concurrent writers: owners, the publish lock, and repairs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from compress.errors import CompressError
from compress.ownership import OWNER_FILE, RETIRED_FILE
from compress.staging import _start_time, staged_directory

MARKER = "done.txt"
#: The record of a run that is gone (no process has this pid).
DEAD = {"host": socket.gethostname(), "pid": 2**22 + 7, "start": "1"}


def _retired(tmp_path, name: str, content: str, target: str | None = "out") -> object:
    """A directory moved aside by a --force replace of `target` (None: a user's look-alike)."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / MARKER).write_text(content)
    if target is not None:
        (directory / RETIRED_FILE).write_text(json.dumps({**DEAD, "target": target}))
    return directory


def _staging(tmp_path, name: str, owner: dict | None) -> object:
    directory = tmp_path / f"out.tmp-{name}"
    directory.mkdir()
    (directory / "part.bin").write_bytes(b"x" * 10)
    if owner is not None:
        (directory / OWNER_FILE).write_text(json.dumps(owner))
    return directory


def test_only_staging_whose_owner_is_gone_is_removed(tmp_path):
    host = socket.gethostname()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _start_time(sleeper.pid)
        live = _staging(tmp_path, "live", {"host": host, "pid": sleeper.pid, "start": started})
        dead = _staging(tmp_path, "dead", {"host": host, "pid": 2**22 + 7, "start": "1"})
        recycled = _staging(tmp_path, "recycled", {"host": host, "pid": sleeper.pid, "start": "0"})
        other_host = _staging(tmp_path, "remote", {"host": host + "-elsewhere", "pid": 1, "start": "1"})
        fresh_unowned = _staging(tmp_path, "fresh", None)
        old_unowned = _staging(tmp_path, "keep", None)  # a user's folder named like ours, however old
        past = time.time() - 30 * 86400
        os.utime(old_unowned, (past, past))
        with staged_directory(tmp_path / "out", marker=MARKER) as staging:
            (staging / MARKER).write_text("ok")
        assert live.exists() and other_host.exists() and fresh_unowned.exists() and old_unowned.exists()
        assert not dead.exists() and not recycled.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / "out" / MARKER).read_text() == "ok"
    assert not (tmp_path / "out" / OWNER_FILE).exists()


def test_a_replace_killed_between_its_renames_is_restored(tmp_path, capsys):
    """The kill left the old directory at OUT.old-* and nothing at OUT: the next run restores it."""
    retired = _retired(tmp_path, "out.old-1234abcd", "old")
    with (
        pytest.raises(CompressError, match="already exists; pass --force"),
        staged_directory(tmp_path / "out", marker=MARKER),
    ):
        pass
    assert (tmp_path / "out" / MARKER).read_text() == "old"
    assert not retired.exists() and not (tmp_path / "out" / RETIRED_FILE).exists()
    assert "restored" in capsys.readouterr().err


def test_a_replace_killed_after_its_renames_is_tidied(tmp_path, capsys):
    """The new directory is in place and the old one was not yet removed: the leftover goes."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MARKER).write_text("new")
    retired = _retired(tmp_path, "out.old-1234abcd", "old")
    with staged_directory(tmp_path / "out", force=True, marker=MARKER) as staging:
        (staging / MARKER).write_text("newer")
    assert (tmp_path / "out" / MARKER).read_text() == "newer"
    assert not retired.exists()
    assert "removed" in capsys.readouterr().err


def test_look_alikes_without_our_record_are_never_touched(tmp_path, capsys):
    """A user's `out.old-v1` (even holding our marker), another target's retired copy, and a
    retired copy of a live run are left alone, whether `out` exists or not."""
    backup = _retired(tmp_path, "out.old-v1", "user's backup", target=None)
    other = _retired(tmp_path, "out.old-2", "another target's", target="elsewhere")
    with staged_directory(tmp_path / "out", marker=MARKER) as staging:
        (staging / MARKER).write_text("new")
    assert (tmp_path / "out" / MARKER).read_text() == "new"
    assert (backup / MARKER).read_text() == "user's backup" and (other / MARKER).is_file()
    assert capsys.readouterr().err == ""


def test_force_replaces_only_a_directory_we_wrote(tmp_path):
    """A folder of the user's files at `out` is refused, with or without --force; an empty one or
    one holding our marker is replaced."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with (
        pytest.raises(CompressError, match="did not write"),
        staged_directory(out, force=True, marker=MARKER),
    ):
        pass
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    with staged_directory(out, force=True, marker=MARKER) as staging:
        (staging / MARKER).write_text("new")
    with staged_directory(out, force=True, marker=MARKER) as staging:
        (staging / MARKER).write_text("newer")
    assert (out / MARKER).read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_over_a_symlinked_out_is_refused_and_leaves_the_link(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (target / MARKER).write_text("ours")
    link = tmp_path / "out"
    link.symlink_to(target)
    with (
        pytest.raises(CompressError, match="symbolic link"),
        staged_directory(link, force=True, marker=MARKER),
    ):
        pass
    assert link.is_symlink() and (target / MARKER).read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real"]


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from compress.staging import staged_directory
    out, tag = Path(sys.argv[1]), sys.argv[2]
    with staged_directory(out, marker="done.txt") as staging:
        for index in range(20):
            (staging / f"part-{index}.txt").write_text(tag)
            time.sleep(0.05)
        (staging / "done.txt").write_text(tag)
    """
)


def test_two_concurrent_writers_both_finish_with_one_complete_result(tmp_path):
    out = tmp_path / "out"
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(out), tag], stderr=subprocess.PIPE, text=True)
        for tag in ("a", "b")
    ]
    results = [(writer.wait(timeout=120), writer.stderr.read()) for writer in writers]
    assert all(code == 0 for code, _ in results), results
    tag = (out / "done.txt").read_text()
    assert {(out / f"part-{index}.txt").read_text() for index in range(20)} == {tag}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
