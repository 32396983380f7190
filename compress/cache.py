"""Where `compress` keeps reusable results (the demo model, later baseline eval statistics)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$COMPRESS_CACHE_DIR`, else `$XDG_CACHE_HOME/compress`, else `~/.cache/compress`."""
    if explicit := os.environ.get("COMPRESS_CACHE_DIR"):
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "compress"
