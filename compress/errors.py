"""User-facing errors.

Anything the user can fix (a bad path, a bad option, data that is too short) is raised as a
`CompressError`. The CLI prints its message as one line on stderr and exits with code 2; the Python
API lets it propagate like any other exception.
"""

from __future__ import annotations


class CompressError(Exception):
    """A problem with the user's input, explained in one sentence that says what to do."""

    exit_code = 2


class UnsupportedArchitectureError(CompressError):
    """The model's architecture is not one `compress` knows how to walk."""
