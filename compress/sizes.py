"""Byte sizes as users write them on the command line and in recipes ("4GB", "512MiB", "1000")."""

from __future__ import annotations


def parse_size(text: str, option: str) -> int:
    """Bytes in `text`; a ValueError naming `option` when it is not a positive size."""
    from accelerate.utils import convert_file_size_to_int

    stripped = text.strip()
    try:
        size = int(stripped) if stripped.isdigit() else convert_file_size_to_int(stripped)
    except (ValueError, TypeError):
        size = -1
    if size <= 0:
        raise ValueError(f"{option} '{text}' is not a size such as 4GB or 512MiB")
    return size
