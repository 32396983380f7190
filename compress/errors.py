"""User-facing errors.

Anything the user can fix (a bad path, a bad option, data that is too short) is raised as a
`CompressError`. The CLI prints its message as one line on stderr and exits with code 2; the Python
API lets it propagate like any other exception.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path


class CompressError(Exception):
    """A problem with the user's input, explained in one sentence that says what to do."""

    exit_code = 2


class UnsupportedArchitectureError(CompressError):
    """The model's architecture is not one `compress` knows how to walk."""


#: Operating-system errors that the user fixes (space, permissions, names, paths), with what to do.
USER_FIXABLE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EFBIG: "the file is too large for this file system; write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "no permission; write somewhere else or fix the permissions",
    errno.EPERM: "no permission; write somewhere else or fix the permissions",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "the path is a directory; give a file",
    errno.EEXIST: "something already exists there; remove it or choose another path",
    errno.ENOTEMPTY: "the directory is not empty; remove it or choose another path",
    errno.EBUSY: "it is in use or a mount point; choose another path",
    errno.ETXTBSY: "the file is in use; stop what holds it or choose another path",
    errno.EMLINK: "the directory holds too many entries; write somewhere else",
    errno.EXDEV: "it cannot be moved across file systems; write within one file system",
    errno.ELOOP: "the path has a loop of symbolic links; check the path",
    errno.EIO: "the disk or file system failed; check it, then try again",
    errno.ESTALE: "the network file system lost the file; try again",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n) and try again",
    errno.ENFILE: "too many open files on the system; close some and try again",
    errno.ENODEV: "no such device; check the path",
    errno.ENXIO: "no such device; check the path",
}

#: Errors of writing: the file being written (not a copy's source) is the one to name.
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

#: An OS error code inside another library's message: Rust's `(os error 28)` (safetensors,
#: tokenizers), Python's `[Errno 28]` (an `OSError` formatted into a `RuntimeError`).
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
#: Write failures reported without an errno: torch's serializer ("file write failed", or the
#: position check a short write trips: "unexpected pos 576 vs 534"), numpy's "N requested and M
#: written". They are out of space in practice.
_WRITE_FAILURE_TEXT = re.compile(
    r"file write failed|failed writing file|inline_container\.cc.*unexpected pos"
    r"|\d+ requested and \d+ written"
)
#: The text of an errno that a wrapper kept without its number.
_ERRNO_TEXT = {os.strerror(code): code for code in (errno.ENOSPC, errno.EDQUOT)}
#: Locals that name the file a frame reads or writes: safetensors' `save_file(tensors, filename)`,
#: torch's `save(obj, f)`, `json.dump(obj, fp)`, `Path.write_text` (`self`), shutil's `dst`.
_PATH_LOCALS = (
    "filename",
    "name_or_buffer",
    "f",
    "fp",
    "file",
    "path",
    "dst",
    "save_directory",
    "directory",
    "self",
)
#: Files compared with the text a failed parse was given, to find which file it was: at most this
#: many bytes each, and this many of a directory's files.
_MAX_COMPARED_BYTES = 64 * 1024**2
_MAX_COMPARED_FILES = 256


def os_error_message(exc: BaseException) -> str | None:
    """One line for an OS error the user can fix, naming the path; None for any other (a bug).

    `exc` is an `OSError`, an exception raised from one, or a library's own error that carries one
    only in its text (safetensors' `SafetensorError: … No space left on device (os error 28)`,
    torch's `RuntimeError: … file write failed`): a full disk is the user's to fix however it
    arrives. Such wrappers do not name their file, so the innermost frame that held it does.
    """
    error = as_os_error(exc)
    if error is None or error.errno not in USER_FIXABLE_ERRNOS:
        return None
    if error.filename2 is not None and error.errno in _WRITE_ERRNOS:  # a copy: name its target
        path = error.filename2
    else:
        path = error.filename if error.filename is not None else _path_in_traceback(exc)
    where = f" '{os.fsdecode(path)}'" if isinstance(path, str | bytes | os.PathLike) else ""
    strerror = error.strerror or os.strerror(error.errno)
    return f"{strerror}{where}: {USER_FIXABLE_ERRNOS[error.errno]}"


def as_os_error(exc: BaseException) -> OSError | None:
    """The OS error behind `exc`: itself, one it was raised from (`raise … from`), or one a library
    reported only in its message; None when there is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        text = str(current)
        if match := _ERRNO_IN_TEXT.search(text):
            code = int(match.group(1) or match.group(2))
            return OSError(code, os.strerror(code))
        for strerror, code in _ERRNO_TEXT.items():
            if strerror in text:
                return OSError(code, strerror)
        if _WRITE_FAILURE_TEXT.search(text):
            return OSError(errno.ENOSPC, "Writing stopped part way (the disk is probably full)")
        current = current.__cause__
    return None


def user_error_message(exc: BaseException) -> str | None:
    """One line for an exception that the user's files or system caused, however deep it arose: an
    OS error (`os_error_message`), a JSON file that does not parse, a text file that is not UTF-8;
    None for anything else, which is a bug in `compress` (exit code 3).

    Every such file is read by one `json.loads(path.read_text())` or another across the code base;
    mapping the failure here, once, names the file without a try/except at each of them."""
    message = os_error_message(exc)
    if message is not None:
        return message
    if isinstance(exc, json.JSONDecodeError):
        path = _file_holding(exc, exc.doc.encode("utf-8", "surrogateescape"), whole=True)
        if path is not None:
            return (
                f"'{path}' is not valid JSON ({exc.msg}: line {exc.lineno} column {exc.colno}); "
                "fix or replace the file"
            )
    if isinstance(exc, UnicodeDecodeError):
        path = _file_holding(exc, bytes(exc.object), whole=False)
        if path is not None:
            return f"'{path}' is not UTF-8 text ({exc.reason} at byte {exc.start}); give a text file"
    return None


def _frames_innermost_first(exc: BaseException) -> list[dict[str, object]]:
    """The local variables of every frame `exc` passed through, innermost first, then those of the
    exceptions it was raised from."""
    frames: list[dict[str, object]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain = []
        tb = current.__traceback__
        while tb is not None:
            chain.append(tb.tb_frame.f_locals)
            tb = tb.tb_next
        frames.extend(reversed(chain))
        current = current.__cause__
    return frames


def _as_path(value: object) -> Path | None:
    """A local variable as a path: a `Path`, a string that looks like one, an open file's name."""
    if isinstance(value, os.PathLike):
        return Path(os.fspath(value))
    if isinstance(value, str) and os.sep in value and "\n" not in value and len(value) < 4096:
        return Path(value)
    name = _attribute(value, "name")
    if _attribute(value, "write") is not None and isinstance(name, str) and os.sep in name:
        return Path(name)
    return None


def _attribute(value: object, name: str) -> object:
    """`value.name`, or None: a property that fails must not turn one error into another."""
    try:
        return getattr(value, name, None)
    except Exception:
        return None


def _path_in_traceback(exc: BaseException) -> Path | None:
    """The file the innermost frame that named one was working on (what a library's error left out)."""
    for frame_locals in _frames_innermost_first(exc):
        for name in _PATH_LOCALS:
            path = _as_path(frame_locals.get(name))
            if path is not None:
                return path
    return None


def _file_holding(exc: BaseException, content: bytes, whole: bool) -> Path | None:
    """The file whose bytes a failed parse was given: `json.loads(path.read_text())` hands the
    parser text, not the file, so the file is found among the paths the failing frames held (a path,
    a directory's files, or an object's `path`/`directory`), by its content. `whole`: the parser had
    the whole file, its newlines translated (else a decoder's chunk of it)."""
    candidates: list[Path] = []
    for frame_locals in _frames_innermost_first(exc):
        for value in frame_locals.values():
            for item in (value, _attribute(value, "path"), _attribute(value, "directory")):
                path = _as_path(item) if item is not None else None
                if path is not None and path not in candidates:
                    candidates.append(path)
    for path in candidates:
        try:
            files = sorted(path.iterdir())[:_MAX_COMPARED_FILES] if path.is_dir() else [path]
            for file in files:
                if not file.is_file():
                    continue
                size = file.stat().st_size
                if not len(content) <= size <= (2 * len(content) if whole else _MAX_COMPARED_BYTES):
                    continue  # cannot be it: only a file of a fitting size is read
                data = file.read_bytes()
                if whole and data.replace(b"\r\n", b"\n").replace(b"\r", b"\n") == content:
                    return file
                if not whole and content and content in data:
                    return file
        except OSError:
            continue
    return None


def option_error(exc: Exception) -> str:
    """One line for a pydantic validation error of options: the first problem, naming the option
    as its flag (`--damp-percent: Input should be less than 1`); a check of the whole config
    (a model validator) has no field and already names its options."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors()[0]
    message = str(first.get("msg", exc)).removeprefix("Value error, ")
    field = ".".join(str(part) for part in first.get("loc", ()))
    return f"--{field.replace('_', '-')}: {message}" if field else message
