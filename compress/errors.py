"""User-facing errors.

Anything the user can fix (a bad path, a bad option, data that is too short) is raised as a
`CompressError`. The CLI prints its message as one line on stderr and exits with code 2; the Python
API lets it propagate like any other exception.
"""

from __future__ import annotations

import errno


class CompressError(Exception):
    """A problem with the user's input, explained in one sentence that says what to do."""

    exit_code = 2


class UnsupportedArchitectureError(CompressError):
    """The model's architecture is not one `compress` knows how to walk."""


#: Operating-system errors that the user fixes (space, permissions, names, paths), with what to do.
USER_FIXABLE_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "free some space or write somewhere else",
    errno.EDQUOT: "free some space or write somewhere else",
    errno.EROFS: "the file system is read-only; write somewhere else",
    errno.EACCES: "no permission; write somewhere else or fix the permissions",
    errno.EPERM: "no permission; write somewhere else or fix the permissions",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter one",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; check the path",
    errno.EISDIR: "the path is a directory; give a file",
}


def os_error_message(exc: OSError) -> str | None:
    """One line for an OS error the user can fix, naming the path; None for any other (a bug)."""
    advice = USER_FIXABLE_ERRNOS.get(exc.errno or -1)
    if advice is None:
        return None
    path = f" '{exc.filename}'" if exc.filename else ""
    return f"{exc.strerror or 'OS error'}{path}: {advice}"


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
