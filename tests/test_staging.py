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
from compress.staging import OWNER_FILE, UNOWNED_GRACE_SECONDS, _start_time, staged_directory

MARKER = "done.txt"


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
        old_unowned = _staging(tmp_path, "old", None)
        past = time.time() - UNOWNED_GRACE_SECONDS - 60
        os.utime(old_unowned, (past, past))
        with staged_directory(tmp_path / "out", marker=MARKER) as staging:
            (staging / MARKER).write_text("ok")
        assert live.exists() and other_host.exists() and fresh_unowned.exists()
        assert not dead.exists() and not recycled.exists() and not old_unowned.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert (tmp_path / "out" / MARKER).read_text() == "ok"
    assert not (tmp_path / "out" / OWNER_FILE).exists()


def test_a_replace_killed_between_its_renames_is_restored(tmp_path, capsys):
    """The kill left the old directory at OUT.old-* and nothing at OUT: the next run restores it."""
    retired = tmp_path / "out.old-1234abcd"
    retired.mkdir()
    (retired / MARKER).write_text("old")
    with (
        pytest.raises(CompressError, match="already exists; pass --force"),
        staged_directory(tmp_path / "out", marker=MARKER),
    ):
        pass
    assert (tmp_path / "out" / MARKER).read_text() == "old"
    assert not retired.exists()
    assert "restored" in capsys.readouterr().err


def test_a_replace_killed_after_its_renames_is_tidied(tmp_path, capsys):
    """The new directory is in place and the old one was not yet removed: the leftover goes."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MARKER).write_text("new")
    retired = tmp_path / "out.old-1234abcd"
    retired.mkdir()
    (retired / MARKER).write_text("old")
    with staged_directory(tmp_path / "out", force=True, marker=MARKER) as staging:
        (staging / MARKER).write_text("newer")
    assert (tmp_path / "out" / MARKER).read_text() == "newer"
    assert not retired.exists()
    assert "removed" in capsys.readouterr().err


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
